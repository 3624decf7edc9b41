"""Reads finished results and draws; never trains."""
