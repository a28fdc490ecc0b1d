pytest_plugins = ["zkpubsub.testing.fixtures"]
