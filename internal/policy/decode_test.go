package policy

import (
	"reflect"
	"strings"
	"testing"
)

// DecodeRules reads a write's body strictly: keys exactly "origin" and
// "methods", each once, methods an array of strings when present.
func TestDecodeRules(t *testing.T) {
	for _, tc := range []struct {
		desc, in string
		want     []Rule
		wantErr  string
	}{
		{"no rules", `[]`, []Rule{}, ""},
		{"origin and methods", `[{"origin":"https://a.example","methods":["GET","put"]}]`,
			[]Rule{{Origin: "https://a.example", Methods: []string{"GET", "put"}}}, ""},
		{"no methods: the default, as in a config", `[{"origin":"https://a.example"}]`, []Rule{{Origin: "https://a.example"}}, ""},
		{"methods empty: kept empty, for validation to refuse", `[{"origin":"https://a.example","methods":[]}]`,
			[]Rule{{Origin: "https://a.example", Methods: []string{}}}, ""},
		{"spaces around tokens", " [ { \"methods\" : [ \"GET\" ] , \"origin\" : \"https://a.example\" } ] \n",
			[]Rule{{Origin: "https://a.example", Methods: []string{"GET"}}}, ""},
		{"null", `null`, nil, "want a JSON array of rules, not null"},
		{"nothing", ``, nil, "not nothing"},
		{"an object", `{"origin":"https://a.example"}`, nil, "not an object"},
		{"a key in another case", `[{"Origin":"https://a.example"}]`, nil, `rule 1: unknown field "Origin"`},
		{"a key in capitals after the real one", `[{"origin":"https://c.example","ORIGIN":"https://evil.example"}]`, nil, `unknown field "ORIGIN"`},
		{"origin twice", `[{"origin":"https://c.example","origin":"https://evil.example"}]`, nil, `field "origin" appears twice`},
		{"methods null", `[{"origin":"https://a.example","methods":null}]`, nil, "not null"},
		{"methods a string", `[{"origin":"https://a.example","methods":"GET"}]`, nil, "not a string"},
		{"a method a number", `[{"origin":"https://a.example","methods":[1]}]`, nil, "a method must be a string, not a number"},
		{"origin null", `[{"origin":null}]`, nil, `"origin" must be a string, not null`},
		{"no origin", `[{"methods":["GET"]}]`, nil, `"origin" is missing`},
		{"the second rule", `[{"origin":"https://a.example"},{"account":"b"}]`, nil, `rule 2: unknown field "account"`},
		{"a rule not an object", `["https://a.example"]`, nil, "rule 1: want an object"},
		{"a second value", `[] {}`, nil, "more than one JSON value"},
		{"cut short", `[{"origin":"https://a.example"`, nil, "EOF"},
		{"a key written with an escape", `[{"\u006frigin":"https://a.example"}]`, nil, `field "origin" is written with an escape`},
		{"methods written with an escape", `[{"origin":"https://a.example","meth\u006fds":["GET"]}]`, nil, `field "methods" is written with an escape`},
		{"an escape in a value is fine", `[{"origin":"https://a\u002eexample"}]`, []Rule{{Origin: "https://a.example"}}, ""},
		{"a number of any size", `[{"origin":1e999}]`, nil, `"origin" must be a string, not a number`},
		{"a byte order mark", "\ufeff[]", nil, "byte order mark"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := DecodeRules([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("DecodeRules(%s): %v, %v; want an error with %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("DecodeRules(%s) = %#v, %v; want %#v", tc.in, got, err, tc.want)
			}
		})
	}
}
