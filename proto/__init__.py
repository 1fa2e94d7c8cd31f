"""Protocol buffer modules for dispatch.sdk.v1, generated from the .proto files here."""
