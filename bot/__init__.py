"""The Discord side: commands, views, the database and dispatch. Never imports torch."""
