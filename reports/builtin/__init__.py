"""The reports that ship with the platform."""
