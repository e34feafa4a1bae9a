"""Small utilities every layer above may use: errors, label conventions, files, environment, schedules."""
