// Package quote quotes the values of a config in error messages, bounded:
// a hostile config's long values must not be repeated in full in every
// message about them.
package quote

import "strconv"

// maxQuoted is the length from which a value quoted in a message is
// shortened: a hostile config's long values must not be repeated in
// full in every message about them.
const maxQuoted = 48

// Value quotes a value of the config for a message, shortened to its first
// bytes and its length when it is long.
func Value(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	cut := maxQuoted - 8
	for cut > 0 && !isRuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "... (" + strconv.Itoa(len(s)) + " bytes)"
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// Message shortens a message from elsewhere (a library's error) that may
// repeat a long value of the config.
func Message(msg string) string {
	if len(msg) <= 2*maxQuoted {
		return msg
	}
	cut := 2 * maxQuoted
	for cut > 0 && !isRuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "..."
}
