package atomspherecors

import (
	"net/http"
	"strings"
	"unicode/utf8"
)

// The path guard. The module decides for the account that Caddy's
// cleaned path names, but the upstream serves the account that its own
// reading of the request target names. Common backends read some
// targets differently from Caddy: Tomcat and Spring strip path
// parameters ("..;/"), Windows servers take "\" for "/", some decode
// twice or accept overlong UTF-8.
// Where any of those readings names another account than Caddy's (or an
// account where Caddy sees none, or none where Caddy sees one), a page
// allowed by one account could read another's data, so the request is
// refused before any CORS decision (docs/behaviour.md §5).
//
// Only targets with '%', ';', '\' or bytes that are not UTF-8 can be
// read differently this way; every other path costs a scan for them.

// guardedPath reports whether the path guard must look at r: its path
// has a '%' (escaped or decoded), ';', '\\' or a byte that is not ASCII
// (an overlong form decoded from upper-case escapes leaves no RawPath).
func guardedPath(r *http.Request) bool {
	return r.URL.RawPath != "" || hasGuardedByte(r.URL.Path)
}

// hasGuardedByte reports whether p has '%', ';', '\\' or a byte of 0x80 or
// more. Every path of every request is scanned, so it reads eight bytes
// at a time: a zero byte of x^(c*lo) is a byte of x equal to c.
func hasGuardedByte(p string) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	for len(p) >= 8 {
		x := uint64(p[0]) | uint64(p[1])<<8 | uint64(p[2])<<16 | uint64(p[3])<<24 |
			uint64(p[4])<<32 | uint64(p[5])<<40 | uint64(p[6])<<48 | uint64(p[7])<<56
		if x&hi != 0 {
			return true
		}
		a, b, c := x^('%'*lo), x^(';'*lo), x^('\\'*lo)
		if ((a-lo)&^a|(b-lo)&^b|(c-lo)&^c)&hi != 0 {
			return true
		}
		p = p[8:]
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c == '%' || c == ';' || c == '\\' || c >= utf8.RuneSelf {
			return true
		}
	}
	return false
}

// ambiguous reports whether some common backend reading of r's target
// names another account than Caddy's reading (id, ok).
func (ix *index) ambiguous(r *http.Request, id string, ok bool) bool {
	raw := r.URL.EscapedPath()
	once := percentDecode(raw)
	readings := [...]string{
		percentDecode(stripParams(raw)),    // parameters stripped, then decoded (Tomcat)
		stripParams(once),                  // decoded, then parameters stripped (%3B)
		strings.ReplaceAll(once, `\`, "/"), // backslash as a separator
		percentDecode(once),                // decoded twice
		decodeOverlong(once),               // overlong UTF-8 for ASCII
		lenientest(raw),                    // all of the above at once
	}
	for _, p := range readings {
		if rid, rok := ix.accountOf(p); rok != ok || rid != id {
			return true
		}
	}
	return false
}

// lenientest reads p as the most lenient backend would: decoded until
// nothing changes (at most three times), overlong UTF-8 folded to ASCII,
// "\" as "/", path parameters stripped.
func lenientest(p string) string {
	for range 3 {
		d := percentDecode(p)
		if d == p {
			break
		}
		p = d
	}
	p = decodeOverlong(p)
	p = strings.ReplaceAll(p, `\`, "/")
	return stripParams(p)
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
