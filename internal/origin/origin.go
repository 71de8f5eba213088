// Package origin parses and normalises web origins (scheme, host and
// port) as written in a rule or sent in an Origin header, into the form
// a browser serialises them in (Fetch standard, "origin").
package origin

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"

	"atomspherecors/internal/quote"
)

// maxHostLen is the longest host name (RFC 1035, 253 characters).
const maxHostLen = 253

// Origin is a parsed, normalised web origin: the tuple a browser
// compares (Fetch standard, "same origin").
type Origin struct {
	Scheme string // "http" or "https"
	Host   string // lower-case ASCII; an IPv6 literal keeps its brackets
	Port   int    // 0 when absent or the scheme's default
}

// String serialises o the way a browser serialises an origin.
func (o Origin) String() string {
	if o.Port == 0 {
		return o.Scheme + "://" + o.Host
	}
	return o.Scheme + "://" + o.Host + ":" + strconv.Itoa(o.Port)
}

// Parse parses and normalises an origin as written in a rule or
// sent in an Origin header. It refuses anything that is not exactly
// scheme://host[:port] with an http or https scheme.
func Parse(s string) (Origin, error) {
	var o Origin
	switch {
	case s == "":
		return o, errors.New("origin is empty")
	case s == "null":
		return o, errors.New(`the "null" origin cannot be allowed`)
	case strings.Contains(s, "*"):
		return o, errors.New("wildcard origins are not supported; list each origin")
	}
	i := strings.Index(s, "://")
	if i < 0 {
		return o, errors.New("origin must have the form scheme://host[:port]")
	}
	switch strings.ToLower(s[:i]) {
	case "http":
		o.Scheme = "http"
	case "https":
		o.Scheme = "https"
	default:
		return o, fmt.Errorf("scheme %s is not http or https", quote.Value(s[:i]))
	}
	rest := s[i+3:]
	if j := strings.IndexAny(rest, "/?#"); j >= 0 {
		switch rest[j] {
		case '/':
			return o, errors.New("origin must not have a path")
		case '?':
			return o, errors.New("origin must not have a query")
		default:
			return o, errors.New("origin must not have a fragment")
		}
	}
	if strings.Contains(rest, "@") {
		return o, errors.New("origin must not have user info")
	}
	if rest == "" {
		return o, errors.New("origin has no host")
	}

	var hostPart, portPart string
	var hasPort bool
	var err error
	if rest[0] == '[' {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return o, errors.New("IPv6 address has no closing bracket")
		}
		hostPart, rest = rest[1:end], rest[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return o, errors.New("unexpected text after IPv6 address")
			}
			portPart, hasPort = rest[1:], true
		}
		if o.Host, err = normaliseIPv6(hostPart); err != nil {
			return o, err
		}
	} else {
		hostPart = rest
		if k := strings.LastIndexByte(rest, ':'); k >= 0 {
			hostPart, portPart, hasPort = rest[:k], rest[k+1:], true
		}
		if o.Host, err = normaliseHost(hostPart); err != nil {
			return o, err
		}
	}
	if hasPort {
		if o.Port, err = parsePort(portPart); err != nil {
			return o, err
		}
		if (o.Scheme == "https" && o.Port == 443) || (o.Scheme == "http" && o.Port == 80) {
			o.Port = 0
		}
	}
	return o, nil
}

// parsePort accepts a decimal port 1-65535 without sign or leading zero,
// as a browser serialises it.
func parsePort(s string) (int, error) {
	if s == "" {
		return 0, errors.New("port is empty")
	}
	if len(s) > 5 || s[0] == '0' {
		return 0, fmt.Errorf("port %s is outside 1-65535", quote.Value(s))
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("port %s is not a number", quote.Value(s))
		}
		n = n*10 + int(c-'0')
	}
	if n > 65535 {
		return 0, fmt.Errorf("port %s is outside 1-65535", quote.Value(s))
	}
	return n, nil
}

// normaliseIPv6 checks an IPv6 literal (without brackets) and returns it
// bracketed in the URL standard's serialisation: lower-case hex, the
// first longest run of two or more zero groups compressed, no zone.
func normaliseIPv6(s string) (string, error) {
	addr, err := netip.ParseAddr(s)
	if err != nil || !addr.Is6() || addr.Zone() != "" {
		return "", fmt.Errorf("%s is not an IPv6 address", quote.Value(s))
	}
	b := addr.As16()
	var groups [8]uint16
	for i := range groups {
		groups[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
	}
	bestStart, bestLen := -1, 1
	for i := 0; i < 8; {
		if groups[i] != 0 {
			i++
			continue
		}
		j := i
		for j < 8 && groups[j] == 0 {
			j++
		}
		if j-i > bestLen {
			bestStart, bestLen = i, j-i
		}
		i = j
	}
	var sb strings.Builder
	sb.WriteByte('[')
	for i := 0; i < 8; i++ {
		if i == bestStart {
			sb.WriteString("::")
			i += bestLen - 1
			continue
		}
		if i > 0 && i != bestStart+bestLen {
			sb.WriteByte(':')
		}
		sb.WriteString(strconv.FormatUint(uint64(groups[i]), 16))
	}
	sb.WriteByte(']')
	return sb.String(), nil
}

// normaliseHost lower-cases a domain name or IPv4 address and converts
// an international name to its ASCII (punycode) form, refusing what a
// browser could never send as an origin's host.
func normaliseHost(s string) (string, error) {
	if s == "" {
		return "", errors.New("origin has no host")
	}
	if strings.HasSuffix(s, ".") {
		return "", fmt.Errorf("host %s must not end with a dot", quote.Value(s))
	}
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			ascii = false
			break
		}
	}
	var h string
	if ascii {
		h = strings.ToLower(s)
		if strings.Contains(h, "xn--") {
			// A punycode label must decode to a valid international name.
			if _, err := idna.Lookup.ToUnicode(h); err != nil {
				return "", fmt.Errorf("host %s is not a valid international name: %s", quote.Value(s), quote.Message(err.Error()))
			}
		}
	} else {
		// idna maps an invalid byte to U+FFFD without refusing it.
		if !utf8.ValidString(s) {
			return "", fmt.Errorf("host %s is not valid UTF-8", quote.Value(s))
		}
		var err error
		if h, err = idna.Lookup.ToASCII(s); err != nil {
			return "", fmt.Errorf("host %s is not a valid international name: %s", quote.Value(s), quote.Message(err.Error()))
		}
	}
	// IDNA mapping can delete characters (a soft hyphen) or turn them into
	// a dot (an ideographic full stop): check the result again.
	if h == "" || strings.HasSuffix(h, ".") {
		return "", fmt.Errorf("host %s must not be empty or end with a dot", quote.Value(s))
	}
	// The URL standard reads a host that ends in a number as an IPv4
	// address, in decimal, octal or hex parts, and browsers serialise it
	// in dotted decimal: "http://1.2.3" is sent as "http://1.2.0.3".
	if endsInNumber(h) {
		v4, err := parseIPv4(h)
		if err != nil {
			return "", fmt.Errorf("host %s ends in a number but is not an IPv4 address: %v", quote.Value(s), err)
		}
		h = v4
	}
	if len(h) > maxHostLen {
		return "", fmt.Errorf("host %s is longer than %d characters", quote.Value(s), maxHostLen)
	}
	prev := byte('.')
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if prev == '.' {
				return "", fmt.Errorf("host %s has an empty label", quote.Value(s))
			}
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return "", fmt.Errorf("host %s has the invalid character %q", quote.Value(s), c)
		}
		prev = c
	}
	return h, nil
}

// endsInNumber is the URL standard's "ends in a number" check of a
// host (https://url.spec.whatwg.org/#ends-in-a-number-checker): its last
// label is all decimal digits, or a hex number "0x...".
func endsInNumber(h string) bool {
	last := h[strings.LastIndexByte(h, '.')+1:]
	if last == "" {
		return false
	}
	if strings.Trim(last, "0123456789") == "" {
		return true
	}
	hex, ok := strings.CutPrefix(last, "0x")
	if !ok {
		hex, ok = strings.CutPrefix(last, "0X")
	}
	return ok && strings.Trim(hex, "0123456789abcdefABCDEF") == ""
}

// parseIPv4 is the URL standard's IPv4 parser
// (https://url.spec.whatwg.org/#concept-ipv4-parser): one to four parts,
// each decimal, octal (leading 0) or hex (0x), the last filling the
// remaining bytes. It returns the dotted-decimal serialisation.
func parseIPv4(h string) (string, error) {
	parts := strings.Split(h, ".")
	if len(parts) > 4 {
		return "", errors.New("more than four parts")
	}
	var nums [4]uint64
	for i, p := range parts {
		n, err := parseIPv4Part(p)
		if err != nil {
			return "", err
		}
		if i < len(parts)-1 && n > 255 {
			return "", fmt.Errorf("part %s is over 255", quote.Value(p))
		}
		nums[i] = n
	}
	last := nums[len(parts)-1]
	if last >= 1<<(8*(5-len(parts))) {
		return "", fmt.Errorf("last part %s is too large", quote.Value(parts[len(parts)-1]))
	}
	addr := last
	for i := 0; i < len(parts)-1; i++ {
		addr += nums[i] << (8 * (3 - i))
	}
	return fmt.Sprintf("%d.%d.%d.%d", addr>>24, addr>>16&0xFF, addr>>8&0xFF, addr&0xFF), nil
}

// parseIPv4Part is the URL standard's IPv4 number parser.
func parseIPv4Part(p string) (uint64, error) {
	if p == "" {
		return 0, errors.New("empty part")
	}
	base := 10
	switch {
	case len(p) >= 2 && (p[:2] == "0x" || p[:2] == "0X"):
		p, base = p[2:], 16
	case len(p) >= 2 && p[0] == '0':
		p, base = p[1:], 8
	}
	if p == "" {
		return 0, nil
	}
	if len(p) > 16 {
		return 0, fmt.Errorf("part %s is too large", quote.Value(p))
	}
	n, err := strconv.ParseUint(p, base, 64)
	if err != nil {
		return 0, fmt.Errorf("part %s is not a number", quote.Value(p))
	}
	return n, nil
}
