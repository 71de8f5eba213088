// Package accounts generates the accounts that the benchmarks of this
// module configure, so that the rs/cors comparison and the end-to-end
// program (cmd/perf-e2e) measure the same config. It mirrors benchRules
// and benchConfigJSON of the root package's bench_test.go, which cannot
// import this module.
//
// Account i is "account-<i>" with three rules: an app origin with GET,
// POST and DELETE, an admin origin on a port with GET, and a development
// origin over http with GET and POST.
package accounts

import (
	"encoding/json"
	"strconv"
	"strings"

	"atomspherecors"
)

// methods are shared by every account's rules (Provision does not change
// a rule), which keeps many accounts built in Go small.
var methods = [3][]string{{"GET", "POST", "DELETE"}, {"GET"}, {"GET", "POST"}}

// ID returns the ID of account i.
func ID(i int) string { return "account-" + strconv.Itoa(i) }

// Rules returns the three rules of account i.
func Rules(i int) []atomspherecors.Rule {
	n := strconv.Itoa(i)
	return []atomspherecors.Rule{
		{Origin: "https://app" + n + ".example.com", Methods: methods[0]},
		{Origin: "https://admin" + n + ".example.org:8443", Methods: methods[1]},
		{Origin: "http://dev" + n + ".example.net:8080", Methods: methods[2]},
	}
}

// Origins returns the origins of account i's rules, in rule order.
func Origins(i int) []string {
	rules := Rules(i)
	out := make([]string, len(rules))
	for k, r := range rules {
		out[k] = r.Origin
	}
	return out
}

// Map returns accounts 0 to n-1 by ID: the handler's "accounts" field.
func Map(n int) map[string][]atomspherecors.Rule {
	m := make(map[string][]atomspherecors.Rule, n)
	for i := range n {
		m[ID(i)] = Rules(i)
	}
	return m
}

// HandlerJSON returns the handler's JSON with accounts 0 to n-1, without
// the "handler" key (a route's loader consumes that key before it calls
// the module loader). Account IDs come in sorted order, as Caddy hands a
// config over: it re-encodes every config with json.Marshal, which sorts
// map keys.
func HandlerJSON(n int) []byte {
	raw, err := json.Marshal(atomspherecors.Handler{Accounts: Map(n)})
	if err != nil {
		panic(err) // strings and slices of strings always encode
	}
	return raw
}

// Caddyfile returns the atomsphere_cors directive with accounts 0 to n-1,
// each of its lines prefixed with indent.
func Caddyfile(n int, indent string) string {
	var sb strings.Builder
	sb.WriteString(indent + "atomsphere_cors {\n")
	for i := range n {
		sb.WriteString(indent + "\taccount " + ID(i) + " {\n")
		for _, r := range Rules(i) {
			sb.WriteString(indent + "\t\torigin " + r.Origin + " " + strings.Join(r.Methods, " ") + "\n")
		}
		sb.WriteString(indent + "\t}\n")
	}
	sb.WriteString(indent + "}\n")
	return sb.String()
}
