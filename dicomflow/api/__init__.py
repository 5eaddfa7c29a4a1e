"""The search API for people: one GraphQL schema (``schema.graphql``), resolvers over the search engine, and
Cognito sign-in checked on every request."""

from pathlib import Path

#: The SDL both transports serve: the local cloud's GraphQL server and the AppSync API (uploaded by deploy).
SCHEMA_FILE = Path(__file__).with_name("schema.graphql")
