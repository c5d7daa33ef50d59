"""Pure numpy/astropy/drizzle algorithms: no stpipe, no file I/O, no logging configuration."""
