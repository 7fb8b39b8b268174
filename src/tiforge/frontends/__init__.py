"""The ways a user drives tiforge: the command line and the console UI."""
