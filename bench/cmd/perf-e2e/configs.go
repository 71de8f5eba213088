package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"atomspherecors/bench/accounts"
)

// variant is one site of the requests/s comparison. All are served by one
// Caddy, so that alternating runs compare the same process.
type variant struct {
	name     string
	cors     string // none, module or snippet
	accounts int
	port     int
	target   int // the account the requests aim at
}

var variants = []variant{
	{"none", "none", 0, 9301, 0},
	{"module-1", "module", 1, 9302, 0},
	{"module-1000", "module", 1000, 9303, 500},
	{"snippet-1", "snippet", 1, 9304, 0},
	{"snippet-1000", "snippet", 1000, 9305, 500},
}

func variantNamed(name string) variant {
	for _, v := range variants {
		if v.name == name {
			return v
		}
	}
	panic("no variant " + name)
}

func (v variant) addr() string { return "127.0.0.1:" + strconv.Itoa(v.port) }

func (v variant) url() string {
	return "http://" + v.addr() + "/api/rest/v1/" + accounts.ID(v.target) + "/Atom/3456"
}

// origin is the target account's first origin: allowed GET, POST, DELETE.
func (v variant) origin() string { return accounts.Origins(v.target)[0] }

// benchName is the benchmark name of requests of kind to v.
func (v variant) benchName(kind string) string {
	if v.cors == "none" {
		return "E2E/case=" + kind + "/cors=none"
	}
	return fmt.Sprintf("E2E/case=%s/cors=%s/accounts=%d", kind, v.cors, v.accounts)
}

// sitesCaddyfile is the Caddyfile of the requests/s comparison: one site
// per variant, each bound to 127.0.0.1, answering "ok" behind its CORS.
func sitesCaddyfile() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n}\n", adminAddr)
	for _, v := range variants {
		fmt.Fprintf(&sb, "http://:%d {\n\tbind 127.0.0.1\n", v.port)
		switch v.cors {
		case "module":
			sb.WriteString(accounts.Caddyfile(v.accounts, "\t"))
		case "snippet":
			sb.WriteString(snippet(v.accounts))
		}
		sb.WriteString("\trespond \"ok\" 200\n}\n")
	}
	return sb.String()
}

// snippet is the usual hand-written CORS of a Caddyfile for accounts 0
// to n-1, one block per account: its origins in a header matcher (one
// line per origin: the values of one field are OR-ed), the preflight
// answered with respond 204.
func snippet(n int) string {
	var sb strings.Builder
	for i := range n {
		id := accounts.ID(i)
		var origins strings.Builder
		for _, o := range accounts.Origins(i) {
			fmt.Fprintf(&origins, "\t\theader Origin %s\n", o)
		}
		fmt.Fprintf(&sb, "\t@cors_%d {\n\t\tpath /api/rest/v1/%s/*\n%s\t}\n", i, id, &origins)
		fmt.Fprintf(&sb, "\t@preflight_%d {\n\t\tmethod OPTIONS\n\t\tpath /api/rest/v1/%s/*\n%s", i, id, &origins)
		sb.WriteString("\t\theader Access-Control-Request-Method *\n\t}\n")
		fmt.Fprintf(&sb, "\theader @cors_%d {\n\t\tAccess-Control-Allow-Origin {header.Origin}\n", i)
		sb.WriteString("\t\tAccess-Control-Allow-Credentials true\n\t\tVary Origin\n\t}\n")
		fmt.Fprintf(&sb, "\thandle @preflight_%d {\n\t\theader {\n", i)
		sb.WriteString("\t\t\tAccess-Control-Allow-Methods \"GET, POST, DELETE\"\n")
		sb.WriteString("\t\t\tAccess-Control-Allow-Headers \"cache-control,content-type,expires,last-modified,accept,content-language,authorization,pragma\"\n")
		sb.WriteString("\t\t\tAccess-Control-Max-Age 3600\n")
		sb.WriteString("\t\t\tVary \"Origin, Access-Control-Request-Method, Access-Control-Request-Headers\"\n")
		sb.WriteString("\t\t}\n\t\trespond 204\n\t}\n")
	}
	return sb.String()
}

// bigAddr is the site of the configs with -big accounts.
const bigAddr = "127.0.0.1:9310"

// adminJSON is the admin part of every JSON config: loopback at addr,
// and the config never saved to disk.
func adminJSON(addr string) map[string]any {
	return map[string]any{"listen": addr, "config": map[string]any{"persist": false}}
}

// bigConfig is the JSON config of one site at bigAddr: atomsphere_cors
// with accounts 0 to n-1 in front of a static "ok".
func bigConfig(n int) ([]byte, error) {
	return siteConfig(adminAddr, bigAddr, inlineHandler(n))
}

// inlineHandler is atomsphere_cors with accounts 0 to n-1 in its config.
func inlineHandler(n int) map[string]any {
	return map[string]any{"handler": "atomsphere_cors", "accounts": accounts.Map(n)}
}

// siteConfig is the JSON config of one site at site, handler in front of
// a static "ok", with the admin API at admin. editPath names an account
// of handler's.
func siteConfig(admin, site string, handler map[string]any) ([]byte, error) {
	return json.Marshal(map[string]any{
		"admin": adminJSON(admin),
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"s": map[string]any{
			"listen": []string{site},
			"routes": []any{map[string]any{"handle": []any{
				handler,
				map[string]any{"handler": "static_response", "body": "ok"},
			}}},
		}}}},
	})
}

// emptyConfig is a config with the admin API alone.
func emptyConfig() ([]byte, error) {
	return json.Marshal(map[string]any{"admin": adminJSON(adminAddr)})
}

// editPath is the admin API path of account id's rules in siteConfig.
func editPath(id string) string {
	return "/config/apps/http/servers/s/routes/0/handle/0/accounts/" + id
}
