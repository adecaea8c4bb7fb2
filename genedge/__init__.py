"""genedge: the ground floor shared by every service: the contract (pydantic schemas of every
message), the one HTTP error mapping, credentials, server limits and options. It imports no
service; the command line and the local supervisor live above the services, in `launcher`."""

__version__ = "0.1.0"
