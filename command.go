package atomspherecors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "atomsphere-cors",
		Usage: "explain (--config <file> [--adapter <name>] | --address <admin address>) --origin <origin> [--request-method <method>] [--json] <METHOD> <URL>",
		Short: "Explains the decisions of the atomsphere_cors handler",
		Long: `
explain shows what the atomsphere_cors handler does with one request: the
handler and account the URL's path maps to (after cleaning), the account's
rules, the Origin as normalised, whether the request is a preflight, the
decision (allowed or denied) and its reason, and the exact status and
Access-Control-* and Vary headers the handler sends.

With --config it reads a config file (adapted with --adapter, as caddy run
does); with --address it asks the running server's admin API, so it sees
the rules in force now. The answer is the handler's own: it runs the
handler on a synthetic request.

--origin and --request-method may be repeated: each is one header line.
--json prints one JSON object. The exit status is 0 whatever the decision,
and not 0 only when there is no answer (a bad config, an unreachable
server).

Example:

	caddy atomsphere-cors explain --config Caddyfile \
		--origin https://mydomain.com --request-method DELETE \
		OPTIONS http://localhost/api/rest/v1/account-123456/Atom
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(explainCommand())
		},
	})
}

func explainCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "explain (--config <file> [--adapter <name>] | --address <admin address>) --origin <origin> [--request-method <method>] [--json] <METHOD> <URL>",
		Short: "Explains the decision on one request",
		Args:  cobra.ExactArgs(2),
		RunE:  runExplain,
	}
	f := c.Flags()
	f.StringP("config", "c", "", "Configuration file")
	f.StringP("adapter", "a", "", "Name of config adapter to apply")
	f.String("address", "", "Address of the running server's admin API")
	f.StringArray("origin", nil, "Origin header line (repeat for several lines)")
	f.StringArray("request-method", nil, "Access-Control-Request-Method header line (repeat for several lines)")
	f.Bool("json", false, "Print one JSON object")
	_ = c.MarkFlagRequired("origin")
	c.MarkFlagsMutuallyExclusive("config", "address")
	c.MarkFlagsOneRequired("config", "address")
	return c
}

func runExplain(cmd *cobra.Command, args []string) error {
	f := cmd.Flags()
	configFile, _ := f.GetString("config")
	adapter, _ := f.GetString("adapter")
	address, _ := f.GetString("address")
	origins, _ := f.GetStringArray("origin")
	reqMethods, _ := f.GetStringArray("request-method")
	asJSON, _ := f.GetBool("json")
	req := explainRequest{method: args[0], url: args[1], origins: origins, requestMethods: reqMethods}
	cmd.SilenceUsage = true

	var e *Explanation
	var err error
	if address != "" {
		e, err = explainRemote(address, req)
	} else {
		e, err = explainConfig(configFile, adapter, req)
	}
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if asJSON {
		return json.NewEncoder(out).Encode(e)
	}
	return writeExplanation(out, e)
}

// explainConfig answers from a config file.
func explainConfig(configFile, adapter string, req explainRequest) (*Explanation, error) {
	cfgJSON, _, _, err := caddycmd.LoadConfig(configFile, adapter)
	if err != nil {
		return nil, err
	}
	var top struct {
		Storage json.RawMessage `json:"storage"`
	}
	_ = json.Unmarshal(cfgJSON, &top) // treeFromConfig reports a config that is not JSON
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	ctx = ctx.WithValue(explainKey{}, explainEnv{storageRaw: top.Storage})
	tree, err := treeFromConfig(ctx, cfgJSON)
	if err != nil {
		return nil, err
	}
	return tree.explain(req)
}

// explainRemote asks the admin API of a running server.
func explainRemote(address string, req explainRequest) (*Explanation, error) {
	q := url.Values{"method": {req.method}, "url": {req.url}}
	q["origin"] = req.origins
	if len(req.requestMethods) > 0 {
		q["request_method"] = req.requestMethods
	}
	res, err := caddycmd.AdminAPIRequest(address, http.MethodGet, explainPath+"?"+q.Encode(), nil, nil)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var e Explanation
	if err := json.NewDecoder(io.LimitReader(res.Body, 16<<20)).Decode(&e); err != nil {
		return nil, fmt.Errorf("reading the answer of %s: %v", address, err)
	}
	if e.Outcome == "" {
		return nil, errors.New("the server's answer has no outcome: is atomsphere_cors in its build?")
	}
	return &e, nil
}

// writeExplanation prints e for a person.
func writeExplanation(w io.Writer, e *Explanation) error {
	var b strings.Builder
	line := func(name, format string, args ...any) {
		fmt.Fprintf(&b, "%-11s"+format+"\n", append([]any{name + ":"}, args...)...)
	}
	line("request", "%s %s", e.Method, e.URL)
	if e.Handler == "" {
		line("handler", "none (%s)", e.Reason)
		line("decision", "%s", e.Outcome)
		_, err := io.WriteString(w, b.String())
		return err
	}
	handler := e.Handler
	if e.HandlerID != "" {
		handler += " (@id " + e.HandlerID + ")"
	}
	line("server", "%s", e.Server)
	line("handler", "%s", handler)
	path := e.Path
	if e.CleanPath != e.Path {
		path += ", cleaned " + e.CleanPath
	}
	line("path", "%s", path)
	if e.Account == "" {
		line("account", "none (not an account path)")
	} else {
		line("account", "%s (prefix %s)", e.Account, e.Prefix)
		if len(e.Rules) == 0 {
			line("rules", "none")
		}
		for i, r := range e.Rules {
			name := "rules:"
			if i > 0 {
				name = ""
			}
			fmt.Fprintf(&b, "%-11s%s %s\n", name, r.Origin, r.Methods)
		}
	}
	switch {
	case len(e.Origin) == 0:
		line("origin", "none")
	case len(e.Origin) > 1:
		line("origin", "%d lines: %s", len(e.Origin), strings.Join(quoteAll(e.Origin), ", "))
	case e.OriginError != "":
		line("origin", "%q, malformed: %s", e.Origin[0], e.OriginError)
	default:
		line("origin", "%s, normalised %s", e.Origin[0], e.OriginNormalised)
	}
	if e.Preflight {
		line("preflight", "yes (Access-Control-Request-Method: %s)", strings.Join(e.RequestMethod, " | "))
	} else {
		line("preflight", "no")
	}
	if e.Reason != "" {
		line("decision", "%s: %s", e.Outcome, e.Reason)
	} else {
		line("decision", "%s", e.Outcome)
	}
	if e.Reading != "" {
		line("reading", "%s", e.Reading)
	}
	if e.NextHandler {
		line("status", "%d from the next handler (the request goes on; the site's handlers answer it)", e.Status)
	} else {
		line("status", "%d", e.Status)
	}
	if len(e.Headers) == 0 {
		line("headers", "none")
	} else {
		b.WriteString("headers:\n")
		for _, k := range slices.Sorted(maps.Keys(e.Headers)) {
			for _, v := range e.Headers[k] {
				fmt.Fprintf(&b, "  %s: %s\n", k, v)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}
