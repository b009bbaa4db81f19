"""What every stage leans on: params, atomic file publishing, stamps, paths, errors, process lifetime.

Imports nothing of the project outside this package.
"""
