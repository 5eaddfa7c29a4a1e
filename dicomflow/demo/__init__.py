"""The demo loop and its sample data: synthetic studies with known truth, the seeder, simulated annotators."""
