"""Users, passwords, API clients and scopes, audit."""
