package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/itchyny/gojq"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(JSON{})
}

// JSON fetches a JSON array over HTTP(S); each element is one backend. The
// parts of a backend are read from the element with jq queries (the *_pattern
// fields). The defaults read the element's keys of the same names:
//
//	[{"host": "10.0.0.1", "port": 6379, "weight": 2, "priority": 1,
//	  "sni": "db.example.com", "max_connections": 100}]
//
// A pattern written as a gobetween path (keys separated by dots, indexes in
// brackets: "host", "addr.port", "ports[0]", "my-key") reads that path;
// anything else is a jq expression used as it is (".addr // .ip",
// "(.port | tonumber)", "if .tls then .sni else null end").
//
// host and port are required: a string, and a number or numeric string. The
// other parts are optional (null or no value means the default) and must be
// whole numbers (or numeric strings) >= 0, or a string for sni. The fetch
// fails, and the last good list stays (failpolicy keeplast), when the endpoint
// cannot be reached or answers with a status other than 2xx, when the answer
// is not a JSON array, or when an element lacks a host or port or has a part
// of the wrong type (the error names the element's index and the field). An
// element whose host is "" or whose port is 0 is skipped with a log line.
type JSON struct {
	Common
	// The http:// or https:// URL of the array. Required.
	Endpoint string `json:"json_endpoint,omitempty"`
	// jq query for the host. Default "host".
	HostPattern string `json:"json_host_pattern,omitempty"`
	// jq query for the port. Default "port".
	PortPattern string `json:"json_port_pattern,omitempty"`
	// jq query for the weight. Default "weight".
	WeightPattern string `json:"json_weight_pattern,omitempty"`
	// jq query for the priority. Default "priority".
	PriorityPattern string `json:"json_priority_pattern,omitempty"`
	// jq query for the TLS server name. Default "sni".
	SNIPattern string `json:"json_sni_pattern,omitempty"`
	// jq query for max_connections. Default "max_connections".
	MaxConnectionsPattern string `json:"json_max_connections_pattern,omitempty"`

	queries []jsonQuery
	logger  *zap.Logger
}

// jsonQuery is one compiled pattern and the backend part it reads.
type jsonQuery struct {
	part  string // backend line attribute: host, port, weight, ...
	field string // the JSON field that holds the pattern
	text  string // the query as run
	code  *gojq.Code
}

// CaddyModule returns the Caddy module information.
func (JSON) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.discovery.json",
		New: func() caddy.Module { return new(JSON) },
	}
}

// Provision compiles the queries.
func (j *JSON) Provision(ctx caddy.Context) error {
	j.logger = ctx.Logger()
	j.queries = j.queries[:0]
	for _, p := range []struct{ part, field, pattern string }{
		{"host", "json_host_pattern", j.HostPattern},
		{"port", "json_port_pattern", j.PortPattern},
		{"weight", "json_weight_pattern", j.WeightPattern},
		{"priority", "json_priority_pattern", j.PriorityPattern},
		{"sni", "json_sni_pattern", j.SNIPattern},
		{"max_connections", "json_max_connections_pattern", j.MaxConnectionsPattern},
	} {
		text := jqText(p.pattern, p.part)
		q, err := gojq.Parse(text)
		if err != nil {
			return fmt.Errorf("%s %q: %w", p.field, p.pattern, err)
		}
		code, err := gojq.Compile(q)
		if err != nil {
			return fmt.Errorf("%s %q: %w", p.field, p.pattern, err)
		}
		j.queries = append(j.queries, jsonQuery{part: p.part, field: p.field, text: text, code: code})
	}
	return nil
}

// gobetweenPath matches a gobetween path: keys separated by dots, array
// indexes in brackets ("addr.ip", "ports[0]", "[1].host", "my-host").
var gobetweenPath = regexp.MustCompile(`^(?:[A-Za-z0-9_-]+|\[\d+\])(?:\.[A-Za-z0-9_-]+|\[\d+\])*$`)

// jqIdentifier is a key that jq can take after a bare dot.
var jqIdentifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// jqText turns a pattern into jq: empty = the default key; a gobetween path
// becomes the jq path to the same place; anything else is jq already.
func jqText(pattern, def string) string {
	pattern = strings.TrimSpace(pattern)
	if pattern == "" {
		pattern = def
	}
	if !gobetweenPath.MatchString(pattern) {
		return pattern
	}
	var q strings.Builder
	for i, key := range strings.Split(pattern, ".") {
		key, index, _ := strings.Cut(key, "[")
		switch {
		case key == "":
		case jqIdentifier.MatchString(key):
			q.WriteString("." + key)
		default:
			q.WriteString("." + strconv.Quote(key))
		}
		if index != "" {
			if i == 0 && key == "" {
				q.WriteString(".")
			}
			q.WriteString("[" + index)
		}
	}
	return q.String()
}

// Validate checks the settings.
func (j *JSON) Validate() error {
	if err := checkEndpoint("json_endpoint", j.Endpoint); err != nil {
		return err
	}
	return j.ValidateCommon()
}

// Fetch gets the array and reads each element.
func (j *JSON) Fetch(ctx context.Context) ([]backend.Backend, error) {
	body, err := getEndpoint(ctx, j.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("json: %w", err)
	}
	return j.parse(ctx, body)
}

// parse reads the backends from an answer of the endpoint.
func (j *JSON) parse(ctx context.Context, body []byte) ([]backend.Backend, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("json %s: malformed answer: %w", j.Endpoint, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("json %s: malformed answer: data after the top-level value", j.Endpoint)
	}
	elems, ok := doc.([]any)
	if !ok {
		return nil, fmt.Errorf("json %s: the answer is %s, want an array of backends", j.Endpoint, jsonKind(doc))
	}
	list := make([]backend.Backend, 0, len(elems))
	for i, el := range elems {
		b, err := j.element(ctx, el)
		if errors.Is(err, errUnusable) {
			j.logger.Warn("json: skipping a backend without host or port",
				zap.String("endpoint", j.Endpoint), zap.Int("element", i))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("json %s: element [%d]: %w", j.Endpoint, i, err)
		}
		list = append(list, b)
	}
	return list, nil
}

// element reads one backend from one element of the array.
func (j *JSON) element(ctx context.Context, el any) (backend.Backend, error) {
	parts := make([]string, len(j.queries))
	for k, q := range j.queries {
		v, err := q.first(ctx, el)
		if err != nil {
			return backend.Backend{}, fmt.Errorf("%s %s: %w", q.field, q.text, err)
		}
		if v == nil {
			if k < 2 { // host, port
				return backend.Backend{}, fmt.Errorf("%s %s: no %s", q.field, q.text, q.part)
			}
			continue
		}
		if parts[k], err = jsonText(v, q.part == "host" || q.part == "sni"); err != nil {
			return backend.Backend{}, fmt.Errorf("%s %s: %w", q.field, q.text, err)
		}
	}
	attrs := make([][2]string, 0, len(j.queries)-2)
	for k, q := range j.queries[2:] {
		attrs = append(attrs, [2]string{q.part, parts[k+2]})
	}
	return assemble(parts[0], parts[1], attrs)
}

// first runs the query on v and returns its first result (nil for none).
func (q *jsonQuery) first(ctx context.Context, v any) (any, error) {
	out, ok := q.code.RunWithContext(ctx, v).Next()
	if !ok {
		return nil, nil
	}
	if err, isErr := out.(error); isErr {
		return nil, err
	}
	return out, nil
}

// jsonText renders a query result as backend line text: a string (when
// text) or a whole number, which may also be written as a string.
func jsonText(v any, text bool) (string, error) {
	if s, ok := v.(string); ok {
		return s, nil
	}
	if text {
		return "", fmt.Errorf("got %s, want a string", jsonKind(v))
	}
	switch n := v.(type) {
	case int:
		return strconv.Itoa(n), nil
	case *big.Int:
		return n.String(), nil
	case json.Number:
		if _, err := n.Int64(); err == nil {
			return n.String(), nil
		}
		f, err := n.Float64()
		if err != nil {
			return "", fmt.Errorf("got %s, want a whole number", n)
		}
		v = f
	}
	if f, ok := v.(float64); ok {
		if f != math.Trunc(f) || math.Abs(f) > 1<<53 {
			return "", fmt.Errorf("got %v, want a whole number", f)
		}
		return strconv.FormatInt(int64(f), 10), nil
	}
	return "", fmt.Errorf("got %s, want a number", jsonKind(v))
}

// jsonKind names the JSON type of a decoded value for error messages.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return "a number"
}

// UnmarshalCaddyfile reads
//
//	discovery json URL {
//		endpoint URL
//		host_pattern QUERY
//		port_pattern QUERY
//		weight_pattern QUERY
//		priority_pattern QUERY
//		sni_pattern QUERY
//		max_connections_pattern QUERY
//		interval, timeout, failpolicy
//	}
//
// The URL comes inline or as endpoint. The full JSON names (json_endpoint,
// json_host_pattern, ...) are accepted too.
func (j *JSON) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // kind
	if d.NextArg() {
		j.Endpoint = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var dst *string
		switch strings.TrimPrefix(d.Val(), "json_") {
		case "endpoint":
			dst = &j.Endpoint
		case "host_pattern":
			dst = &j.HostPattern
		case "port_pattern":
			dst = &j.PortPattern
		case "weight_pattern":
			dst = &j.WeightPattern
		case "priority_pattern":
			dst = &j.PriorityPattern
		case "sni_pattern":
			dst = &j.SNIPattern
		case "max_connections_pattern":
			dst = &j.MaxConnectionsPattern
		default:
			if err := j.UnmarshalCommon(d); err != nil {
				return err
			}
			continue
		}
		if err := oneString(d, dst); err != nil {
			return err
		}
	}
	return nil
}

var (
	_ Configured            = (*JSON)(nil)
	_ caddy.Provisioner     = (*JSON)(nil)
	_ caddy.Validator       = (*JSON)(nil)
	_ caddyfile.Unmarshaler = (*JSON)(nil)
)
