package healthchecks

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func healthHandler(w http.ResponseWriter, r *http.Request) {
	sni := ""
	if r.TLS != nil {
		sni = r.TLS.ServerName
	}
	switch r.URL.Path {
	case "/health":
		fmt.Fprint(w, "ok")
	case "/degraded":
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"state":"healthy","checks":{"db":"slow"}}`)
	case "/down":
		http.Error(w, "down", http.StatusServiceUnavailable)
	case "/json-unhealthy":
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"state":"unhealthy"}`)
	case "/huge":
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, `{"state":"healthy","pad":"%s"}`, strings.Repeat("x", 100<<10))
	case "/status":
		if r.URL.RawQuery != "full=1" || r.Host != "api.internal" {
			http.Error(w, "wrong query or host "+r.Host, http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case "/sni":
		if sni != "api.internal" {
			http.Error(w, "sni "+sni, http.StatusBadRequest)
		}
	case "/redirect":
		http.Redirect(w, r, "/health", http.StatusFound)
	case "/ua":
		if r.UserAgent() != "between-healthcheck" {
			http.Error(w, r.UserAgent(), http.StatusBadRequest)
		}
	default:
		http.NotFound(w, r)
	}
}

func TestHTTPCheck(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(healthHandler))
	defer plain.Close()
	secure := httptest.NewUnstartedServer(http.HandlerFunc(healthHandler))
	secure.Config.ErrorLog = log.New(io.Discard, "", 0) // "http request to an https server" is expected
	secure.StartTLS()
	defer secure.Close()
	plainAddr := strings.TrimPrefix(plain.URL, "http://")
	secureAddr := strings.TrimPrefix(secure.URL, "https://")

	tests := []struct {
		name, addr, config, wantErr string
	}{
		{"default path 200", plainAddr, `{}`, ""},
		{"503 with state healthy", plainAddr, `{"http_path":"/degraded"}`, ""},
		{"503 plain", plainAddr, `{"http_path":"/down"}`, "http status 503 (want [200])"},
		{"503 with state unhealthy", plainAddr, `{"http_path":"/json-unhealthy"}`, "http status 503"},
		{"503 with JSON beyond 64 KiB", plainAddr, `{"http_path":"/huge"}`, "http status 503"},
		{"404", plainAddr, `{"http_path":"/nothing"}`, "http status 404"},
		{"custom path, query, host and status", plainAddr, `{"http_path":"/status?full=1","http_host":"api.internal","http_expected_status":[200,204]}`, ""},
		{"wrong host", plainAddr, `{"http_path":"/status?full=1","http_expected_status":[204]}`, "http status 400 (want [204])"},
		{"expected status excludes 200", plainAddr, `{"http_expected_status":[204]}`, "http status 200 (want [204])"},
		{"redirects are not followed", plainAddr, `{"http_path":"/redirect"}`, "http status 302"},
		{"redirect expected", plainAddr, `{"http_path":"/redirect","http_expected_status":[302]}`, ""},
		{"user agent", plainAddr, `{"http_path":"/ua"}`, ""},
		{"https without verification", secureAddr, `{"http_scheme":"https"}`, ""},
		{"https sends http_host as SNI", secureAddr, `{"http_scheme":"https","http_path":"/sni","http_host":"api.internal:8443"}`, ""},
		{"https 503 with state healthy", secureAddr, `{"http_scheme":"https","http_path":"/degraded"}`, ""},
		{"http to a TLS port", secureAddr, `{}`, "http status 400"},
		{"refused", closedPort(t), `{}`, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := `{"interval":"1s"}`
			if tt.config != `{}` {
				cfg = `{"interval":"1s",` + strings.TrimPrefix(tt.config, "{")
			}
			h := mustLoad(t, "http", cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			checkErr(t, h.Check(ctx, backendAt(t, tt.addr)), tt.wantErr)
		})
	}
}

func TestHTTPIgnoresProxyEnvironment(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(healthHandler))
	defer srv.Close()
	t.Setenv("HTTP_PROXY", "http://"+closedPort(t))
	t.Setenv("http_proxy", "http://"+closedPort(t))
	h := mustLoad(t, "http", `{"interval":"1s"}`)
	if err := h.Check(context.Background(), backendAt(t, strings.TrimPrefix(srv.URL, "http://"))); err != nil {
		t.Fatalf("check went through the proxy: %v", err)
	}
}
