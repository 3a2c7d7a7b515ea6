"""Training recipes that make the models the package ships."""
