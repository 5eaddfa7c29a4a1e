"""The model artifact format, the networks and the one preprocessing definition."""
