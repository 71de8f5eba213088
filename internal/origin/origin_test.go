package origin

import (
	"strings"
	"testing"
)

// TestParse is the origin table: normalisation and every refusal,
// as jub0bs/cors internal/origins/origins_test.go.
func TestParse(t *testing.T) {
	cases := []struct {
		desc    string
		input   string
		want    string
		wantErr string
	}{
		{desc: "https without port", input: "https://mydomain.com", want: "https://mydomain.com"},
		{desc: "http with port", input: "http://localhost:8080", want: "http://localhost:8080"},
		{desc: "scheme and host lower-cased", input: "HTTPS://MyDomain.COM", want: "https://mydomain.com"},
		{desc: "default https port dropped", input: "https://mydomain.com:443", want: "https://mydomain.com"},
		{desc: "default http port dropped", input: "http://mydomain.com:80", want: "http://mydomain.com"},
		{desc: "443 is not the default for http", input: "http://mydomain.com:443", want: "http://mydomain.com:443"},
		{desc: "80 is not the default for https", input: "https://mydomain.com:80", want: "https://mydomain.com:80"},
		{desc: "lowest port", input: "https://mydomain.com:1", want: "https://mydomain.com:1"},
		{desc: "highest port", input: "https://mydomain.com:65535", want: "https://mydomain.com:65535"},
		{desc: "subdomains and hyphens", input: "https://app-1.eu.mydomain.com", want: "https://app-1.eu.mydomain.com"},
		{desc: "IPv4 host", input: "http://127.0.0.1:8080", want: "http://127.0.0.1:8080"},
		{desc: "IDN converted to punycode", input: "https://bücher.example", want: "https://xn--bcher-kva.example"},
		{desc: "IDN upper case converted to punycode", input: "https://BÜCHER.example", want: "https://xn--bcher-kva.example"},
		{desc: "IDN in another script", input: "https://例え.jp:8443", want: "https://xn--r8jz45g.jp:8443"},
		{desc: "punycode kept", input: "https://XN--BCHER-KVA.example", want: "https://xn--bcher-kva.example"},
		{desc: "IPv6 loopback", input: "http://[::1]:8080", want: "http://[::1]:8080"},
		{desc: "IPv6 compressed and lower-cased", input: "http://[2001:DB8:0:0:0:0:0:1]", want: "http://[2001:db8::1]"},
		{desc: "IPv6 first longest zero run compressed", input: "https://[2001:db8:0:0:1:0:0:1]", want: "https://[2001:db8::1:0:0:1]"},
		{desc: "IPv6 single zero group not compressed", input: "https://[2001:db8:0:1:1:1:1:1]", want: "https://[2001:db8:0:1:1:1:1:1]"},
		{desc: "IPv6 leading zeros dropped", input: "https://[2001:0db8::0001]", want: "https://[2001:db8::1]"},
		{desc: "IPv4-mapped IPv6 serialised in hex", input: "https://[::ffff:192.0.2.1]", want: "https://[::ffff:c000:201]"},
		{desc: "IPv6 default port dropped", input: "https://[::1]:443", want: "https://[::1]"},
		// The URL standard's IPv4 parser: hosts that end in a number are
		// IPv4 addresses, serialised in dotted decimal
		// (https://url.spec.whatwg.org/#concept-ipv4-parser).
		{desc: "IPv4 in three parts: the last fills two bytes", input: "http://1.2.3", want: "http://1.2.0.3"},
		{desc: "IPv4 in two parts", input: "http://127.1:8080", want: "http://127.0.0.1:8080"},
		{desc: "IPv4 as one decimal number", input: "http://2130706433", want: "http://127.0.0.1"},
		{desc: "IPv4 in hex parts", input: "http://0x7f.1", want: "http://127.0.0.1"},
		{desc: "IPv4 in one hex number, upper-case X", input: "http://0X7F000001", want: "http://127.0.0.1"},
		{desc: "IPv4 in octal parts", input: "https://0300.0250.0.1", want: "https://192.168.0.1"},
		{desc: "IPv4 with a bare 0x part", input: "http://0x.0x.0x.1", want: "http://0.0.0.1"},
		{desc: "IPv4 in full-width digits (IDNA maps them to ASCII)", input: "http://１２７.０.０.１", want: "http://127.0.0.1"},
		{desc: "IPv4 part over 255", input: "http://256.0.0.1", wantErr: "not an IPv4 address"},
		{desc: "IPv4 last part too large", input: "http://1.2.3.256", wantErr: "not an IPv4 address"},
		{desc: "IPv4 in five parts", input: "http://1.2.3.4.5", wantErr: "not an IPv4 address"},
		{desc: "IPv4 with a bad octal digit", input: "http://09.1.1.1", wantErr: "not an IPv4 address"},
		{desc: "a domain with a numeric last label", input: "https://example.123", wantErr: "not an IPv4 address"},
		{desc: "a last label with digits and letters is a domain", input: "https://app.1a", want: "https://app.1a"},
		{desc: "a last label 0x with a non-hex letter is a domain", input: "https://app.0xg", want: "https://app.0xg"},

		{desc: "empty", input: "", wantErr: "origin is empty"},
		{desc: "null", input: "null", wantErr: `the "null" origin cannot be allowed`},
		{desc: "wildcard", input: "*", wantErr: "wildcard origins are not supported"},
		{desc: "wildcard subdomain", input: "https://*.mydomain.com", wantErr: "wildcard origins are not supported"},
		{desc: "no scheme", input: "mydomain.com", wantErr: "origin must have the form scheme://host[:port]"},
		{desc: "one slash", input: "https:/mydomain.com", wantErr: "origin must have the form scheme://host[:port]"},
		{desc: "scheme ftp", input: "ftp://mydomain.com", wantErr: `scheme "ftp" is not http or https`},
		{desc: "scheme file", input: "file://mydomain.com", wantErr: `scheme "file" is not http or https`},
		{desc: "lone / path", input: "https://mydomain.com/", wantErr: "origin must not have a path"},
		{desc: "path", input: "https://mydomain.com/app", wantErr: "origin must not have a path"},
		{desc: "query", input: "https://mydomain.com?q", wantErr: "origin must not have a query"},
		{desc: "fragment", input: "https://mydomain.com#f", wantErr: "origin must not have a fragment"},
		{desc: "user info", input: "https://user@mydomain.com", wantErr: "origin must not have user info"},
		{desc: "user info with password", input: "https://user:pw@mydomain.com", wantErr: "origin must not have user info"},
		{desc: "missing host", input: "https://", wantErr: "origin has no host"},
		{desc: "missing host with port", input: "https://:443", wantErr: "origin has no host"},
		{desc: "port 0", input: "https://mydomain.com:0", wantErr: `port "0" is outside 1-65535`},
		{desc: "port 65536", input: "https://mydomain.com:65536", wantErr: `port "65536" is outside 1-65535`},
		{desc: "port too long", input: "https://mydomain.com:000443", wantErr: `is outside 1-65535`},
		{desc: "port with leading zero", input: "https://mydomain.com:0443", wantErr: `is outside 1-65535`},
		{desc: "port not a number", input: "https://mydomain.com:abc", wantErr: `port "abc" is not a number`},
		{desc: "negative port", input: "https://mydomain.com:-1", wantErr: `port "-1" is not a number`},
		{desc: "port with sign", input: "https://mydomain.com:+443", wantErr: `port "+443" is not a number`},
		{desc: "empty port", input: "https://mydomain.com:", wantErr: "port is empty"},
		{desc: "trailing dot", input: "https://mydomain.com.", wantErr: `host "mydomain.com." must not end with a dot`},
		{desc: "empty label", input: "https://mydomain..com", wantErr: "has an empty label"},
		{desc: "leading dot", input: "https://.mydomain.com", wantErr: "has an empty label"},
		{desc: "space in host", input: "https://my domain.com", wantErr: "has the invalid character"},
		{desc: "invalid punycode", input: "https://xn--a.example", wantErr: "is not a valid international name"},
		{desc: "IPv6 without closing bracket", input: "https://[::1", wantErr: "IPv6 address has no closing bracket"},
		{desc: "text after IPv6", input: "https://[::1]x", wantErr: "unexpected text after IPv6 address"},
		{desc: "IPv4 in brackets", input: "https://[127.0.0.1]", wantErr: "is not an IPv6 address"},
		{desc: "IPv6 with zone", input: "https://[fe80::1%25eth0]", wantErr: "is not an IPv6 address"},
		{desc: "IPv6 without brackets", input: "https://::1", wantErr: "has the invalid character"},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			o, err := Parse(tc.input)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse(%q) = %q, want an error containing %q", tc.input, o.String(), tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q): error %q, want it to contain %q", tc.input, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.input, err)
			}
			if got := o.String(); got != tc.want {
				t.Errorf("Parse(%q) = %q, want %q", tc.input, got, tc.want)
			}
		})
	}
}
