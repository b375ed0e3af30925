"""Text into values within bounds: JSON and YAML dumps that cannot cost more than they are worth, and whole numbers
from ASCII digits. Pure."""
