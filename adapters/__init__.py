"""Platform adapters: each translates one platform's requests to the core and back."""
