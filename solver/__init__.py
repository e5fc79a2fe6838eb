"""protonfem.solver."""
