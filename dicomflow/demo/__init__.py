"""The demo loop and its sample data (synthetic studies, the seeder, simulated annotators)."""
