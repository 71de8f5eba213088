package atomspherecors

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(explainAPI{})
}

// explainAPI serves GET /atomsphere_cors/explain on Caddy's admin API:
// the explain command's answer (explain.go) from the running config, so
// that it sees the rules as they are now, admin API edits included.
//
// Query parameters: method and url (required), origin and
// request_method (each may be repeated, one header line each). The
// answer is an Explanation in JSON.
type explainAPI struct{}

// CaddyModule returns the Caddy module information.
func (explainAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.atomsphere_cors",
		New: func() caddy.Module { return new(explainAPI) },
	}
}

// explainPath is the admin route of the explain command.
const explainPath = "/atomsphere_cors/explain"

// Routes returns the explain route.
func (explainAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: explainPath, Handler: caddy.AdminHandlerFunc(serveExplain)}}
}

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

// Interface guards
var _ caddy.AdminRouter = explainAPI{}
