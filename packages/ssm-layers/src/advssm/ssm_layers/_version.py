__version__ = "0.1.0"
INTERFACE_VERSION = 1
