package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Plaintext{})
}

// Plaintext fetches a text document over HTTP(S) and reads one backend per
// line. By default each line is a gobetween backend line:
//
//	host:port [weight=N] [priority=N] [max_connections=N] [sni=NAME]
//
// With plaintext_regex_pattern, each line is matched against that regular
// expression instead (Go syntax, unanchored unless it says ^ and $) and the
// backend is taken from its named groups: host and port (required), weight,
// priority, sni and max_connections (optional; an empty group means the
// default).
//
// Blank lines and lines starting with # are ignored. The fetch fails, and the
// last good list stays (failpolicy keeplast), when the endpoint cannot be
// reached, answers with a status other than 2xx, or a line does not parse or
// match (the error names the line). A line whose host or port comes out empty,
// or whose port is 0, is skipped with a log line.
type Plaintext struct {
	Common
	// The http:// or https:// URL of the list. Required.
	Endpoint string `json:"plaintext_endpoint,omitempty"`
	// A regular expression with named groups host and port (and optionally
	// weight, priority, sni, max_connections) that each line must match.
	// Default: lines are gobetween backend lines.
	RegexPattern string `json:"plaintext_regex_pattern,omitempty"`

	re     *regexp.Regexp
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Plaintext) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.discovery.plaintext",
		New: func() caddy.Module { return new(Plaintext) },
	}
}

// regexGroups are the named groups a plaintext_regex_pattern may have.
var regexGroups = []string{"host", "port", "weight", "priority", "sni", "max_connections"}

// Provision compiles the regular expression.
func (p *Plaintext) Provision(ctx caddy.Context) error {
	p.logger = ctx.Logger()
	p.re = nil
	if p.RegexPattern == "" {
		return nil
	}
	re, err := regexp.Compile(p.RegexPattern)
	if err != nil {
		return fmt.Errorf("plaintext_regex_pattern: %w", err)
	}
	for _, name := range re.SubexpNames() {
		if name != "" && !contains(regexGroups, name) {
			return fmt.Errorf("plaintext_regex_pattern: unknown group %q (want %s)", name, strings.Join(regexGroups, ", "))
		}
	}
	for _, name := range regexGroups[:2] {
		if re.SubexpIndex(name) < 0 {
			return fmt.Errorf("plaintext_regex_pattern %q: needs the named groups host and port, e.g. (?P<host>[^:\\s]+):(?P<port>\\d+)", p.RegexPattern)
		}
	}
	p.re = re
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Validate checks the settings.
func (p *Plaintext) Validate() error {
	if err := checkEndpoint("plaintext_endpoint", p.Endpoint); err != nil {
		return err
	}
	return p.ValidateCommon()
}

// Fetch gets the document and parses it.
func (p *Plaintext) Fetch(ctx context.Context) ([]backend.Backend, error) {
	body, err := getEndpoint(ctx, p.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("plaintext: %w", err)
	}
	parse := backend.Parse
	if p.re != nil {
		parse = p.parseMatch
	}
	list, err := parseLines(string(body), parse, func(n int, line string) {
		p.logger.Warn("plaintext: skipping a backend without host or port",
			zap.String("endpoint", p.Endpoint), zap.Int("line", n), zap.String("text", clip(line, 200)))
	})
	if err != nil {
		return nil, fmt.Errorf("plaintext %s: %w", p.Endpoint, err)
	}
	return list, nil
}

// parseMatch reads one line with the regular expression.
func (p *Plaintext) parseMatch(line string) (backend.Backend, error) {
	m := p.re.FindStringSubmatch(line)
	if m == nil {
		return backend.Backend{}, fmt.Errorf("does not match plaintext_regex_pattern")
	}
	group := func(name string) string {
		if i := p.re.SubexpIndex(name); i >= 0 {
			return m[i]
		}
		return ""
	}
	attrs := make([][2]string, 0, 4)
	for _, name := range regexGroups[2:] {
		attrs = append(attrs, [2]string{name, group(name)})
	}
	return assemble(group("host"), group("port"), attrs)
}

// errUnusable marks a backend without host or port (or with port 0): sources
// skip it with a log line instead of failing the fetch.
var errUnusable = errors.New("empty host or port")

// parseLines parses text one line at a time with parse. Blank lines and lines
// starting with # are ignored. The first line that does not parse fails the
// whole list with an error naming it; a line that parse reports as unusable
// (errUnusable) is left out and reported to skip (line numbers from 1).
func parseLines(text string, parse func(string) (backend.Backend, error), skip func(n int, line string)) ([]backend.Backend, error) {
	list := []backend.Backend{}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b, err := parse(line)
		switch {
		case errors.Is(err, errUnusable) && skip != nil:
			skip(i+1, line)
		case err != nil:
			return nil, fmt.Errorf("line %d %q: %w", i+1, clip(line, 200), err)
		default:
			list = append(list, b)
		}
	}
	return list, nil
}

// assemble builds a backend from the parts a source found: host and port, and
// attributes (weight, priority, max_connections, sni) whose empty values mean
// the default. The parts are checked like a backend line. A missing host or
// port, or port 0, gives errUnusable.
func assemble(host, port string, attrs [][2]string) (backend.Backend, error) {
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if host == "" || port == "" || strings.Trim(port, "0") == "" {
		return backend.Backend{}, errUnusable
	}
	if strings.ContainsFunc(host, unicode.IsSpace) {
		return backend.Backend{}, fmt.Errorf("host %q: invalid", host)
	}
	var line strings.Builder
	line.WriteString(net.JoinHostPort(host, port))
	for _, a := range attrs {
		if a[1] == "" {
			continue
		}
		if strings.ContainsFunc(a[1], unicode.IsSpace) {
			return backend.Backend{}, fmt.Errorf("%s %q: must not contain white space", a[0], a[1])
		}
		line.WriteString(" " + a[0] + "=" + a[1])
	}
	return backend.Parse(line.String())
}

// usableAddress reports whether host and port, as a source read them from
// an answer, make a backend address that a backend line can say: a host
// without white space (IPv6 without brackets), a port from 1 to 65535.
func usableAddress(host string, port int) bool {
	if strings.ContainsFunc(host, unicode.IsSpace) {
		return false
	}
	_, _, err := backend.SplitHostPort(net.JoinHostPort(host, strconv.Itoa(port)))
	return err == nil
}

// maxBody bounds the size of an endpoint's answer.
const maxBody = 16 << 20

// endpointClient fetches the json and plaintext endpoints; the Runner's
// timeout comes through the request's context.
var endpointClient = &http.Client{}

// getEndpoint GETs url and returns the body of a 2xx answer.
func getEndpoint(ctx context.Context, endpoint string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return nil, err
	}
	resp, err := endpointClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		head, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		if msg := firstLine(string(head)); msg != "" {
			return nil, fmt.Errorf("GET %s: status %s: %s", endpoint, resp.Status, msg)
		}
		return nil, fmt.Errorf("GET %s: status %s", endpoint, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading the answer: %w", endpoint, err)
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("GET %s: answer larger than %d bytes", endpoint, maxBody)
	}
	return body, nil
}

// checkEndpoint checks an endpoint URL field.
func checkEndpoint(field, endpoint string) error {
	if endpoint == "" {
		return fmt.Errorf("%s: required (an http:// or https:// URL)", field)
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%s %q: want an http:// or https:// URL", field, endpoint)
	}
	return nil
}

// UnmarshalCaddyfile reads
//
//	discovery plaintext URL {
//		endpoint URL
//		regex_pattern REGEXP
//		interval, timeout, failpolicy
//	}
//
// The URL comes inline or as endpoint. The full JSON names
// (plaintext_endpoint, plaintext_regex_pattern) are accepted too.
func (p *Plaintext) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // kind
	if d.NextArg() {
		p.Endpoint = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "endpoint", "plaintext_endpoint":
			err = oneString(d, &p.Endpoint)
		case "regex_pattern", "plaintext_regex_pattern":
			err = oneString(d, &p.RegexPattern)
		default:
			err = p.UnmarshalCommon(d)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// oneString reads the one argument of the subdirective at the dispenser's
// current token.
func oneString(d *caddyfile.Dispenser, dst *string) error {
	if !d.Args(dst) || d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

var (
	_ Configured            = (*Plaintext)(nil)
	_ caddy.Provisioner     = (*Plaintext)(nil)
	_ caddy.Validator       = (*Plaintext)(nil)
	_ caddyfile.Unmarshaler = (*Plaintext)(nil)
)
