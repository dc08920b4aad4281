"""CGEE in the server: verification requests that stop their forward at an intermediate layer."""
