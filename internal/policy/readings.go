package policy

// The readings of a request path that the path guard (pathguard.go)
// checks: each is what some common backend makes of the path Caddy
// decodes (docs/behaviour.md §5).

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// foldKey is the ID two accounts share when a backend that folds case,
// width, compatibility forms and accents reads them as one.
func foldKey(id string) string { return letters(strings.ToLower(id)) }

// isPlainID reports whether id is lower-case ASCII, its own fold key.
func isPlainID(id string) bool {
	for i := 0; i < len(id); i++ {
		if c := id[i]; c >= utf8.RuneSelf || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// letters is s with the letter foldings of the readings applied.
func letters(s string) string { return foldRunes(stripMarks(compatible(s))) }

// A reading is what one kind of common backend makes of the escaped
// path raw (once is raw percent-decoded once), other than Caddy's and
// the raw segments' (rawAccountOf). Name is what a refusal's debug log,
// access log field and explain output say fired. A reading that folds
// letters may change an account ID's letters without naming another
// account (see sameLetters); read is nil for the most lenient reading,
// which lenientest computes.
type reading struct {
	name         string
	foldsLetters bool
	read         func(raw, once string) string
}

// guardReadings are the readings the path guard checks, each checked on
// its own: their order only decides which one a refusal names when
// several name another account.
var guardReadings = [...]reading{
	{"path parameters stripped, then decoded (Tomcat and other servlet containers)", false,
		func(raw, _ string) string { return percentDecode(stripParams(raw)) }},
	{"decoded, then path parameters stripped (an encoded ;)", false,
		func(_, once string) string { return stripParams(once) }},
	{"backslash read as a separator", false,
		func(_, once string) string { return strings.ReplaceAll(once, `\`, "/") }},
	{"decoded twice", false,
		func(_, once string) string { return percentDecode(once) }},
	{"overlong UTF-8 read as ASCII", false,
		func(_, once string) string { return decodeOverlong(once) }},
	{"decoded, then parsed again as a URL (an encoded # or ?)", false,
		func(_, once string) string { return cutAtAny(once, "#?") }},
	{"cut at the first NUL, as a C string", false,
		func(_, once string) string { return cutAtAny(once, "\x00") }},
	{"control and invisible format characters removed", false,
		func(_, once string) string { return dropControls(once) }},
	{"segments trimmed of spaces and trailing dots (Windows)", false,
		func(_, once string) string { return trimSegments(once) }},
	{"Windows best fit to an ANSI code page", false,
		func(_, once string) string { return bestFit(once) }},
	{"bytes that are not UTF-8 read as Latin-1", false,
		func(_, once string) string { return latin1(once) }},
	{"bytes that are not UTF-8 read as Latin-1, then segments trimmed", false,
		func(_, once string) string { return trimSegments(latin1(once)) }},
	{"Unicode compatibility forms (NFKC)", true,
		func(_, once string) string { return compatible(once) }},
	{"Unicode case folding (Java's equalsIgnoreCase)", true,
		func(_, once string) string { return foldRunes(once) }},
	{"accents and other combining marks dropped", true,
		func(_, once string) string { return stripMarks(once) }},
	{"every reading at once, decoded until nothing changes", true, nil},
}

// Names of the path guard's checks other than guardReadings, for a
// refusal to say which fired.
const (
	readingRawSegments = "split before decoding (Express, chi and other raw-path routers)"
	readingUnending    = "still decoding after 8 rounds (maxDecodes)"
	readingScript      = "PATH_INFO after a script segment (FastCGI split_path)"
	readingOriginal    = "the target before a rewrite (FastCGI REQUEST_URI, {http.request.orig_uri}): "
)

// Reading names the path guard's check that refused a request: one of
// guardReadings, or a check of its own (raw segments, endless decoding, a
// script's PATH_INFO), read from the target as sent or from the original
// one before a rewrite, and then, for a reading, with a script's
// PATH_INFO. It is three bytes, so that a Decision stays as small as it
// was; its words are made only when it is logged.
type Reading struct {
	check       uint8 // 0: none; 1 to len(guardReadings): guardReadings[check-1]; then the checks below
	viaOriginal bool
	thenScript  bool
}

const (
	checkRawSegments = uint8(len(guardReadings) + 1 + iota)
	checkUnending
	checkScript
)

// readingOf is the Reading of guardReadings[i].
func readingOf(i int) Reading { return Reading{check: uint8(i + 1)} }

// Fired reports whether a check of the path guard refused the request.
func (r Reading) Fired() bool { return r.check != 0 }

// String is the reading's name, "" for none.
func (r Reading) String() string {
	var name string
	switch c := int(r.check); {
	case c == 0:
		return ""
	case c <= len(guardReadings):
		name = guardReadings[c-1].name
	case c == int(checkRawSegments):
		name = readingRawSegments
	case c == int(checkUnending):
		name = readingUnending
	default:
		name = readingScript
	}
	if r.thenScript {
		name += ", then " + readingScript
	}
	if r.viaOriginal {
		name = readingOriginal + name
	}
	return name
}

// readings are the paths guardReadings read from the escaped path raw,
// in the table's order. converged is false when raw is still decoding
// after maxDecodes rounds.
func readings(raw string) (rs [len(guardReadings)]string, converged bool) {
	once := percentDecode(raw)
	converged = true
	for i, g := range guardReadings {
		if g.read == nil {
			rs[i], converged = lenientest(raw)
			continue
		}
		rs[i] = g.read(raw, once)
	}
	return rs, converged
}

// maxDecodes bounds the rounds of decoding of the most lenient reading.
// A target still decoding after them is refused: every round at least
// shortens it, and no client of an API nests escapes that deep.
const maxDecodes = 8

// lenientest reads p as the most lenient backend would: decoded until
// nothing changes (compatibility and best-fit forms and overlong UTF-8
// folded each time), "\\" as "/", path parameters stripped, cut at '#',
// '?' or NUL, control and format characters dropped, segments trimmed,
// marks dropped and letters case-folded. converged is false when p was
// still changing after maxDecodes rounds.
func lenientest(p string) (_ string, converged bool) {
	for range maxDecodes {
		d := bestFit(compatible(decodeOverlong(percentDecode(p))))
		if d == p {
			converged = true
			break
		}
		p = d
	}
	p = strings.ReplaceAll(p, `\`, "/")
	p = stripParams(p)
	p = cutAtAny(p, "#?\x00")
	return foldRunes(stripMarks(trimSegments(dropControls(p)))), converged
}

// stripMarks drops combining marks (accents): "kü" (with a combining
// diaeresis) and "ku\u0308" are "ku", as backends that strip accents
// before routing read them.
func stripMarks(s string) string {
	if isASCII(s) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Mn, r) {
			return -1
		}
		return r
	}, norm.NFKD.String(s))
}

// cutAtAny returns s up to its first byte in chars.
func cutAtAny(s, chars string) string {
	if i := strings.IndexAny(s, chars); i >= 0 {
		return s[:i]
	}
	return s
}

// dropControls removes ASCII control characters and invisible format
// characters (Unicode category Cf and other default-ignorable code
// points: soft hyphen, zero-width space, byte order mark...), as backends
// that strip them, or normalise with NFKC_Casefold, do before routing.
func dropControls(s string) string {
	if !hasControl(s) && isASCII(s) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || r >= utf8.RuneSelf && invisible(r) {
			return -1
		}
		return r
	}, s)
}

// invisible reports whether r is a format character or another
// default-ignorable code point.
func invisible(r rune) bool {
	return unicode.In(r, unicode.Cf, unicode.Other_Default_Ignorable_Code_Point)
}

// trimSegments trims each segment of p as Windows and trimming backends
// read it: white space (Unicode's, as Go's TrimSpace, Java's strip and
// JavaScript's trim read it), control and format characters at both
// ends, dots at the end. A segment of dots, spaces and such only becomes
// "..", and so a parent directory, when it has two dots or more, "."
// when it has one.
func trimSegments(p string) string {
	if !needsTrimming(p) {
		return p
	}
	segs := strings.Split(p, "/")
	for i, seg := range segs {
		if seg == "." || seg == ".." {
			continue
		}
		t := strings.TrimRightFunc(strings.TrimFunc(seg, trimmable), func(r rune) bool { return r == '.' || trimmable(r) })
		if t == "" {
			switch n := strings.Count(seg, "."); {
			case n >= 2:
				t = ".."
			case n == 1:
				t = "."
			}
		}
		segs[i] = t
	}
	return strings.Join(segs, "/")
}

// trimmable reports whether some backend trims r from the ends of a
// segment.
func trimmable(r rune) bool {
	return r <= ' ' || r == 0x7f || unicode.IsSpace(r) || r >= utf8.RuneSelf && invisible(r)
}

// needsTrimming reports whether trimSegments could change p: whether p
// has a space, a control character or a byte that is not ASCII, or a
// segment ending in a dot.
func needsTrimming(p string) bool {
	for i := 0; i < len(p); i++ {
		if p[i] <= ' ' || p[i] >= utf8.RuneSelf || p[i] == 0x7f {
			return true
		}
	}
	return hasTrailingDots(p)
}

// hasTrailingDots reports whether a segment of p other than "." and ".."
// ends in a dot, which trimSegments trims.
func hasTrailingDots(p string) bool {
	for p != "" {
		seg, rest, _ := strings.Cut(p, "/")
		if seg != "" && seg[len(seg)-1] == '.' && seg != "." && seg != ".." {
			return true
		}
		p = rest
	}
	return false
}

// compatible is s in Unicode compatibility form (NFKC), in which the
// fullwidth "．", "／" and "＼" are ".", "/" and "\\", as backends that
// normalise paths read them.
func compatible(s string) string {
	if isASCII(s) {
		return s
	}
	return norm.NFKC.String(s)
}

// isASCII reports whether s has only ASCII bytes.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// hasControl reports whether s has an ASCII control character.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c == 0x7f {
			return true
		}
	}
	return false
}

// foldRunes replaces each letter that is not ASCII but case-folds to
// ASCII (upper-cased, then lower-cased, as Java's equalsIgnoreCase and
// regionMatches compare, or within Go's strings.EqualFold) with that
// ASCII text: "ſ" (long s) is "s", "ı" (dotless i) is "i", the Kelvin
// sign is "k", and "ß" and "ẞ" are "ss" (full case mapping, as Java's and
// JavaScript's toUpperCase and Python's casefold give).
func foldRunes(s string) string {
	if isASCII(s) {
		return s
	}
	s = sharpS.Replace(s)
	return strings.Map(func(r rune) rune {
		if r < utf8.RuneSelf {
			return r
		}
		if f := unicode.ToLower(unicode.ToUpper(r)); f < utf8.RuneSelf {
			return f
		}
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < utf8.RuneSelf {
				return unicode.ToLower(f)
			}
		}
		return r
	}, s)
}

// sharpS replaces the letters whose full case folding is ASCII text of
// more than one letter.
var sharpS = strings.NewReplacer("\u00df", "ss", "\u1e9e", "ss")

// bestFitRunes are characters that Windows' "best fit" conversion to an
// ANSI code page turns into "/", "\\" or "." (NFKC already folds the
// fullwidth and small forms): a backend that converts a path that way
// reads them as separators or dots.
var bestFitRunes = strings.NewReplacer(
	"\u2215", "/", // division slash
	"\u2044", "/", // fraction slash
	"\u2216", `\`, // set minus
	"\u29f5", `\`, // reverse solidus operator
	"\u00a5", `\`, // yen sign (Japanese code pages)
	"\u20a9", `\`, // won sign (Korean code pages)
	"\u2024", ".", // one dot leader
)

// bestFit is s with the characters of bestFitRunes replaced.
func bestFit(s string) string {
	if isASCII(s) {
		return s
	}
	return bestFitRunes.Replace(s)
}

// latin1 reads every byte of s that is not part of valid UTF-8 as the
// Latin-1 character of that value ("\xa0" as a no-break space, "\x85" as
// a next-line), as backends that decode escapes to Latin-1 do.
func latin1(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			r = rune(s[i])
		}
		b.WriteRune(r)
		i += n
	}
	return b.String()
}

// percentDecode decodes every valid %XX escape of s and leaves invalid
// ones as they are, as lenient servers do.
func percentDecode(s string) string {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	b.WriteString(s[:i])
	for ; i < len(s); i++ {
		c := s[i]
		if c == '%' && i+2 < len(s) {
			hi, lo := unhex(s[i+1]), unhex(s[i+2])
			if hi >= 0 && lo >= 0 {
				b.WriteByte(byte(hi<<4 | lo))
				i += 2
				continue
			}
		}
		b.WriteByte(c)
	}
	return b.String()
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// stripParams removes path parameters: from each ';' to the end of its
// segment, as servlet containers do before they resolve dot segments.
func stripParams(p string) string {
	if strings.IndexByte(p, ';') < 0 {
		return p
	}
	var b strings.Builder
	b.Grow(len(p))
	for p != "" {
		seg, rest, more := strings.Cut(p, "/")
		if j := strings.IndexByte(seg, ';'); j >= 0 {
			seg = seg[:j]
		}
		b.WriteString(seg)
		if more {
			b.WriteByte('/')
		}
		p = rest
	}
	return b.String()
}

// decodeOverlong replaces overlong UTF-8 encodings of ASCII characters
// (two to four bytes for one code point below 0x80, such as C0 AE for
// ".") with the character, as decoders that do not check for overlong
// forms read them.
func decodeOverlong(s string) string {
	if strings.IndexByte(s, 0xC0) < 0 && strings.IndexByte(s, 0xC1) < 0 &&
		strings.IndexByte(s, 0xE0) < 0 && strings.IndexByte(s, 0xF0) < 0 {
		return s // every overlong form of ASCII starts with one of these
	}
	var b *strings.Builder
	for i := 0; i < len(s); {
		c, n := overlongAt(s[i:])
		if n == 0 {
			if b != nil {
				b.WriteByte(s[i])
			}
			i++
			continue
		}
		if b == nil {
			b = new(strings.Builder)
			b.Grow(len(s))
			b.WriteString(s[:i])
		}
		b.WriteByte(c)
		i += n
	}
	if b == nil {
		return s
	}
	return b.String()
}

// overlongAt returns the ASCII character that s starts with in an
// overlong multi-byte form, and the form's length (0 if it does not).
func overlongAt(s string) (byte, int) {
	cont := func(i int) bool { return i < len(s) && s[i]&0xC0 == 0x80 }
	switch {
	case len(s) >= 2 && (s[0] == 0xC0 || s[0] == 0xC1) && cont(1):
		return (s[0]&0x1F)<<6 | s[1]&0x3F, 2
	case len(s) >= 3 && s[0] == 0xE0 && s[1]&0xE0 == 0x80 && cont(1) && cont(2):
		if cp := int(s[1]&0x3F)<<6 | int(s[2]&0x3F); cp < 0x80 {
			return byte(cp), 3
		}
	case len(s) >= 4 && s[0] == 0xF0 && s[1]&0xF0 == 0x80 && cont(1) && cont(2) && cont(3):
		if cp := int(s[1]&0x3F)<<12 | int(s[2]&0x3F)<<6 | int(s[3]&0x3F); cp < 0x80 {
			return byte(cp), 4
		}
	}
	return 0, 0
}
