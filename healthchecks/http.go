package healthchecks

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(HTTP{})
}

// HTTP sends `GET http_path` to the backend (or to `port`) and is healthy
// when the response status is one of http_expected_status. Any other status
// is healthy only if the body (at most 64 KiB is read) is a JSON object with
// "state": "healthy", the convention of health endpoints that report details
// with 503/429. Redirects are not followed, no proxy from the environment is
// used, and every check opens a new connection.
type HTTP struct {
	Common
	// Path, with an optional query, of the health endpoint. Default "/health".
	Path string `json:"http_path,omitempty"`
	// "http" (default) or "https". With https the certificate is NOT verified
	// (backends are usually addressed by IP); the server name sent is
	// http_host, else the backend's sni, else its host.
	Scheme string `json:"http_scheme,omitempty"`
	// Host header to send. Default: the backend's host:port.
	Host string `json:"http_host,omitempty"`
	// Statuses that mean healthy. Default [200].
	ExpectedStatus []int `json:"http_expected_status,omitempty"`

	path      string
	scheme    string
	expected  []int
	transport *http.Transport
	client    *http.Client
}

// maxHTTPBody is how much of a response body is read for the JSON state.
const maxHTTPBody = 64 << 10

// CaddyModule returns the Caddy module information.
func (h HTTP) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.healthchecks.http",
		New: func() caddy.Module { return new(HTTP) },
	}
}

// Provision applies the defaults and builds the HTTP client.
func (h *HTTP) Provision(caddy.Context) error {
	h.path = h.Path
	if h.path == "" {
		h.path = "/health"
	}
	h.scheme = h.Scheme
	if h.scheme == "" {
		h.scheme = "http"
	}
	h.expected = h.ExpectedStatus
	if len(h.expected) == 0 {
		h.expected = []int{http.StatusOK}
	}
	h.transport = &http.Transport{
		Proxy:                  nil, // never through HTTP_PROXY
		DialContext:            (&net.Dialer{}).DialContext,
		DisableKeepAlives:      true,
		TLSClientConfig:        &tls.Config{InsecureSkipVerify: true}, // documented; ServerName per request
		TLSHandshakeTimeout:    MaxDefaultTimeout,
		ResponseHeaderTimeout:  0, // the check's context bounds it
		MaxResponseHeaderBytes: 64 << 10,
	}
	h.client = &http.Client{
		Transport:     h.transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return nil
}

// Validate checks the settings.
func (h *HTTP) Validate() error {
	if h.Path != "" {
		if !strings.HasPrefix(h.Path, "/") {
			return fmt.Errorf("http_path %q: must start with /", h.Path)
		}
		if _, err := url.ParseRequestURI(h.Path); err != nil {
			return fmt.Errorf("http_path %q: %v", h.Path, err)
		}
	}
	switch h.Scheme {
	case "", "http", "https":
	default:
		return fmt.Errorf("http_scheme %q: want http or https", h.Scheme)
	}
	if strings.ContainsAny(h.Host, " \t\r\n/") {
		return fmt.Errorf("http_host %q: want a host name, optionally with :port", h.Host)
	}
	for i, s := range h.ExpectedStatus {
		if s < 100 || s > 599 {
			return fmt.Errorf("http_expected_status[%d] %d: want 100-599", i, s)
		}
	}
	return h.ValidateCommon()
}

// Check sends one request.
func (h *HTTP) Check(ctx context.Context, b *backend.Backend) error {
	target := h.scheme + "://" + b.Address() + h.path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "between-healthcheck")
	if h.Host != "" {
		req.Host = h.Host
	}
	if h.scheme == "https" {
		// The TLS server name depends on the backend.
		return h.do(req, h.httpsClient(b))
	}
	return h.do(req, h.client)
}

// httpsClient returns a client whose TLS server name fits b.
func (h *HTTP) httpsClient(b *backend.Backend) *http.Client {
	name := h.Host
	if name != "" {
		if host, _, err := net.SplitHostPort(name); err == nil {
			name = host
		}
	} else if b.SNI != "" {
		name = b.SNI
	} else {
		name = b.Host
	}
	t := h.transport.Clone()
	t.TLSClientConfig.ServerName = name
	return &http.Client{Transport: t, CheckRedirect: h.client.CheckRedirect}
}

func (h *HTTP) do(req *http.Request, c *http.Client) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if slices.Contains(h.expected, resp.StatusCode) {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPBody))
	if err != nil {
		return fmt.Errorf("http status %d (want %v), reading body: %w", resp.StatusCode, h.expected, err)
	}
	var state struct {
		State string `json:"state"`
	}
	if json.Unmarshal(body, &state) == nil && state.State == "healthy" {
		return nil
	}
	return fmt.Errorf("http status %d (want %v)", resp.StatusCode, h.expected)
}

// UnmarshalCaddyfile reads
//
//	healthcheck http {
//		interval 2s
//		path /healthz
//		scheme http|https
//		host api.internal
//		expected_status 200 204
//		... common subdirectives (timeout, fails, passes, initial_status, port)
//	}
//
// The http_ prefix is dropped; the full JSON names are accepted too.
func (h *HTTP) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return h.unmarshalBlock(d, func(name string) (bool, error) {
		switch name {
		case "path", "http_path":
			return true, stringArg(d, &h.Path)
		case "scheme", "http_scheme":
			return true, stringArg(d, &h.Scheme)
		case "host", "http_host":
			return true, stringArg(d, &h.Host)
		case "expected_status", "http_expected_status":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return true, d.ArgErr()
			}
			codes, err := parseInts(d, name, args)
			h.ExpectedStatus = append(h.ExpectedStatus, codes...)
			return true, err
		}
		return false, nil
	})
}

// Cleanup releases idle connections (none are kept, but be tidy).
func (h *HTTP) Cleanup() error {
	if h.transport != nil {
		h.transport.CloseIdleConnections()
	}
	return nil
}

var (
	_ Configured            = (*HTTP)(nil)
	_ caddy.Provisioner     = (*HTTP)(nil)
	_ caddy.Validator       = (*HTTP)(nil)
	_ caddy.CleanerUpper    = (*HTTP)(nil)
	_ caddyfile.Unmarshaler = (*HTTP)(nil)
)
