"""The model artifact format (``model.tar.gz``), the networks, and the one preprocessing definition that
training and serving share."""
