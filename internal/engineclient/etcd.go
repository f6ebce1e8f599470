package engineclient

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/caddy-between/between/backend"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// UsesTLS reports whether the settings ask for TLS: explicit (a tls block
// or TLS option is set) or any endpoint written as https://.
func UsesTLS(explicit bool, endpoints []string) bool {
	if explicit {
		return true
	}
	for _, ep := range endpoints {
		if strings.HasPrefix(ep, "https://") {
			return true
		}
	}
	return false
}

// CheckEtcdEndpoints checks etcd endpoints ("host:port", "http://host:port"
// or "https://host:port", all with the scheme of the first) and returns
// their scheme ("" for host:port; "" when there are none). field is the
// config field that holds them ("endpoints", "etcd_endpoints"), which the
// errors name as field[i]. With strictHostPort the host:port must also be
// a backend address (numeric port from 1 to 65535, IPv6 in brackets);
// otherwise any non-empty host and port pass.
func CheckEtcdEndpoints(field string, endpoints []string, strictHostPort bool) (string, error) {
	scheme := ""
	for i, ep := range endpoints {
		s, err := endpointScheme(ep, strictHostPort)
		if err != nil {
			return "", fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		if i > 0 && s != scheme {
			return "", fmt.Errorf("%s[%d] %q: every endpoint must use the same scheme as the first (%q)", field, i, ep, endpoints[0])
		}
		scheme = s
	}
	return scheme, nil
}

// endpointScheme checks one endpoint and returns its scheme ("" for
// host:port).
func endpointScheme(ep string, strictHostPort bool) (string, error) {
	hostport, scheme := ep, ""
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil {
			return "", fmt.Errorf("%q: %v", ep, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return "", fmt.Errorf("%q: scheme %q: want http or https", ep, u.Scheme)
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return "", fmt.Errorf("%q: want %s://host:port only", ep, u.Scheme)
		}
		hostport, scheme = u.Host, u.Scheme
	}
	if !validHostPort(hostport, strictHostPort) {
		return "", fmt.Errorf("%q: want [http://|https://]host:port", ep)
	}
	return scheme, nil
}

func validHostPort(hostport string, strict bool) bool {
	if strict {
		_, _, err := backend.SplitHostPort(hostport)
		return err == nil
	}
	host, port, err := net.SplitHostPort(hostport)
	return err == nil && host != "" && port != ""
}

// EtcdOptions are the settings of an etcd v3 client.
type EtcdOptions struct {
	// The endpoints, as clientv3 takes them.
	Endpoints []string
	// Bounds connecting and logging in.
	DialTimeout time.Duration
	// The keepalive that notices a silent network failure: a ping after
	// KeepAliveTime of silence, which must be answered within
	// KeepAliveTimeout.
	KeepAliveTime, KeepAliveTimeout time.Duration
	// TLS settings; nil without TLS.
	TLS *tls.Config
	// Credentials for etcd authentication ("" for none).
	Username, Password string
	// The client's logger; it logs errors only (its retry warnings repeat
	// the errors its callers report). nil: no logging.
	Logger *zap.Logger
	// FastReconnect caps gRPC's reconnect backoff (by default growing to
	// two minutes) at one second, so that etcd coming back is noticed
	// within about a second, and lets each connection attempt take up to
	// DialTimeout.
	FastReconnect bool
}

// EtcdConfig returns the clientv3 configuration for o.
func EtcdConfig(o EtcdOptions) clientv3.Config {
	logger := o.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	cfg := clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          o.DialTimeout,
		DialKeepAliveTime:    o.KeepAliveTime,
		DialKeepAliveTimeout: o.KeepAliveTimeout,
		TLS:                  o.TLS,
		Username:             o.Username,
		Password:             o.Password,
		Logger:               logger.WithOptions(zap.IncreaseLevel(zapcore.ErrorLevel)),
	}
	if o.FastReconnect {
		cfg.DialOptions = []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: o.DialTimeout,
		})}
	}
	return cfg
}
