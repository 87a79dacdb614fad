"""Pure logic: no I/O, no clock, no trio — tested directly and with hypothesis."""
