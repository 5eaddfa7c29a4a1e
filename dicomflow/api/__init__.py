"""The search API for people: one GraphQL schema (``schema.graphql``), resolvers over the search engine, and
Cognito sign-in checked on every request."""
