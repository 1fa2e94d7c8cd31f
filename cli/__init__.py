"""The dispatchlet command-line tool."""
