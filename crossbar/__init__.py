"""protonfem.crossbar."""
