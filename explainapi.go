package atomspherecors

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The explain command's admin route, GET /atomsphere_cors/explain, is
// served by the module's admin API (adminapi.go): the explain command's
// answer (explain.go) from the running config, so that it sees the rules
// as they are now, admin API edits included.
//
// Query parameters: method and url (required), origin and
// request_method (each may be repeated, one header line each). The
// answer is an Explanation in JSON.

// explainPath is the admin route of the explain command.
const explainPath = "/atomsphere_cors/explain"

func serveExplain(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("method not allowed: use GET")}
	}
	q := r.URL.Query()
	req := explainRequest{method: q.Get("method"), url: q.Get("url"), origins: q["origin"], requestMethods: q["request_method"]}
	if req.method == "" || req.url == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("method and url are required")}
	}
	var tree routeTree
	app, err := caddy.ActiveContext().AppIfConfigured("http")
	switch {
	case errors.Is(err, caddy.ErrNotConfigured):
	case err != nil:
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	default:
		httpApp, ok := app.(*caddyhttp.App)
		if !ok {
			return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: fmt.Errorf("http app is %T", app)}
		}
		tree = treeFromApp(httpApp)
	}
	e, err := tree.explain(req)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(e)
}
