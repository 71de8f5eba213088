package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// DecodeRules reads one account's rules from a write's body, a JSON
// array of {"origin": ..., "methods": [...]} objects, more strictly than
// encoding/json does: keys match exactly ("Origin" is not "origin"),
// are written without escapes ("\u006frigin" is refused) and appear at
// most once, "origin" is required, "methods" is an array of
// strings when present (null is refused, as [] is), and nothing follows
// the array. So a filter in front that reads the body sees the rules
// that are stored: encoding/json would match keys case-insensitively and
// keep the last of repeated ones.
func DecodeRules(b []byte) ([]Rule, error) {
	if bytes.HasPrefix(b, []byte("\xef\xbb\xbf")) {
		return nil, errors.New("the body starts with a byte order mark (U+FEFF): send UTF-8 without one")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // a number is refused as such, whatever its size
	if err := expectDelim(dec, '[', "a JSON array of rules"); err != nil {
		if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
			return nil, errors.New("want a JSON array of rules, not null (an account without rules is [])")
		}
		return nil, err
	}
	rules := []Rule{}
	for i := 0; dec.More(); i++ {
		r, err := decodeRule(dec, b)
		if err != nil {
			return nil, fmt.Errorf("rule %d: %w", i+1, err)
		}
		rules = append(rules, r)
	}
	if _, err := dec.Token(); err != nil { // the closing ]
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("more than one JSON value")
	}
	return rules, nil
}

func decodeRule(dec *json.Decoder, body []byte) (Rule, error) {
	var r Rule
	if err := expectDelim(dec, '{', `an object {"origin": ..., "methods": [...]}`); err != nil {
		return r, err
	}
	seen := map[string]bool{}
	for dec.More() {
		at := dec.InputOffset()
		t, err := dec.Token()
		if err != nil {
			return r, err
		}
		key, _ := t.(string)
		// Spelled as written: "\u006frigin" is "origin" to this decoder
		// but not to a filter that matches the body's bytes.
		if bytes.IndexByte(body[at:dec.InputOffset()], '\\') >= 0 {
			return r, fmt.Errorf("field %s is written with an escape: write field names as they are", q(key))
		}
		if seen[key] {
			return r, fmt.Errorf("field %s appears twice", q(key))
		}
		seen[key] = true
		switch key {
		case "origin":
			if err := decodeString(dec, &r.Origin, `"origin"`); err != nil {
				return r, err
			}
		case "methods":
			ms, err := decodeMethods(dec)
			if err != nil {
				return r, err
			}
			r.Methods = ms
		default:
			return r, fmt.Errorf(`unknown field %s: a rule has "origin" and "methods", spelled so`, q(key))
		}
	}
	if _, err := dec.Token(); err != nil { // the closing }
		return r, err
	}
	if !seen["origin"] {
		return r, errors.New(`"origin" is missing`)
	}
	return r, nil
}

func decodeMethods(dec *json.Decoder) ([]string, error) {
	if err := expectDelim(dec, '[', `"methods" as an array of method names (omit it for GET, POST and DELETE)`); err != nil {
		return nil, err
	}
	ms := []string{}
	for dec.More() {
		var m string
		if err := decodeString(dec, &m, "a method"); err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	_, err := dec.Token() // the closing ]
	return ms, err
}

func decodeString(dec *json.Decoder, v *string, what string) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	s, ok := t.(string)
	if !ok {
		return fmt.Errorf("%s must be a string, not %s", what, tokenKind(t))
	}
	*v = s
	return nil
}

func expectDelim(dec *json.Decoder, d json.Delim, what string) error {
	t, err := dec.Token()
	if err == io.EOF {
		return fmt.Errorf("want %s, not nothing", what)
	}
	if err != nil {
		return err
	}
	if got, ok := t.(json.Delim); !ok || got != d {
		return fmt.Errorf("want %s, not %s", what, tokenKind(t))
	}
	return nil
}

// tokenKind names a JSON token for a message.
func tokenKind(t json.Token) string {
	switch v := t.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64, json.Number:
		return "a number"
	case string:
		return "a string"
	case json.Delim:
		if v == '[' || v == ']' {
			return "an array"
		}
		return "an object"
	}
	return "another value"
}
