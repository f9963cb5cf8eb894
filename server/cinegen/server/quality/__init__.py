"""Quality metrics on generated pictures and the fixed-seed experiments behind `cinegen bench quality`."""
