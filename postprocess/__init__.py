"""protonfem.postprocess."""
