"""The scheduler: accepts calls, stores them, runs them on their endpoints with signed
requests, retries, follows tail calls and resumes suspended calls.

``store`` is its storage contract and the embedded SQLite store.
"""
