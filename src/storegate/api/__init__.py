"""HTTP only: parse, call the service, serialize. No SQL, no backend calls."""
