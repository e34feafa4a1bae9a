"""What a method is: the registry, one file per method, and the parts they share."""
