"""What members see: embeds, progress bars, safe echo of their text, buttons and image fitting. No I/O here."""
