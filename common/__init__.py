"""Small pieces every entry point shares: errors, config loading, atomic outputs, file I/O."""
