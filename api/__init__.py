"""dispatchlet: Dispatch function endpoints on serverless platforms."""
