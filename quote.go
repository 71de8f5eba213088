package atomspherecors

import "atomspherecors/internal/quote"

// q quotes a value of the config for a message, shortened when long.
func q(s string) string { return quote.Value(s) }

// short shortens a message from elsewhere that may repeat a long value.
func short(msg string) string { return quote.Message(msg) }
