// Package config loads command-line settings in M1's order of precedence:
// a flag given on the command line wins, then its environment variable, then
// the YAML file named by --config, then the flag's default.
package config

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// ConfigFlag is the name of the flag that names the YAML config file.
const ConfigFlag = "config"

// Load parses args into fs, then fills every flag not given on the command
// line from its environment variable (envNames maps flag name to variable;
// an empty variable counts as unset) or from the config file. The file is a
// YAML mapping from flag names to scalar values; an unknown key is an error.
// lookupEnv is os.LookupEnv in production.
func Load(fs *flag.FlagSet, args []string, envNames map[string]string, lookupEnv func(string) (string, bool)) error {
	if fs.Lookup(ConfigFlag) == nil {
		fs.String(ConfigFlag, "", "YAML config file (keys are flag names; flags and env override it)")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })

	file := map[string]string{}
	if path := fs.Lookup(ConfigFlag).Value.String(); path != "" {
		var err error
		if file, err = readFile(path); err != nil {
			return err
		}
		for k := range file {
			if fs.Lookup(k) == nil || k == ConfigFlag {
				return fmt.Errorf("config %s: unknown key %q", path, k)
			}
		}
	}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		if env, ok := envNames[f.Name]; ok {
			if v, ok := lookupEnv(env); ok && v != "" {
				if e := fs.Set(f.Name, v); e != nil {
					err = fmt.Errorf("env %s=%q: %w", env, v, e)
				}
				return
			}
		}
		if v, ok := file[f.Name]; ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("config key %s=%q: %w", f.Name, v, e)
			}
		}
	})
	return err
}

func readFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		switch x := v.(type) {
		case map[string]any:
			return nil, fmt.Errorf("config %s: key %q: want a scalar or a list, got a mapping", path, k)
		case []any:
			parts := make([]string, 0, len(x))
			for _, p := range x {
				parts = append(parts, fmt.Sprint(p))
			}
			out[k] = strings.Join(parts, ",")
		case nil:
			out[k] = ""
		default:
			out[k] = fmt.Sprint(x)
		}
	}
	return out, nil
}

// Usage writes the flags of fs with their environment variables, sorted.
func Usage(fs *flag.FlagSet, envNames map[string]string) func() {
	return func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage of %s:\n", fs.Name())
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		slices.Sort(names)
		for _, n := range names {
			f := fs.Lookup(n)
			env := ""
			if e, ok := envNames[n]; ok {
				env = " [$" + e + "]"
			}
			fmt.Fprintf(w, "  --%s%s (default %q)\n    \t%s\n", n, env, f.DefValue, f.Usage)
		}
	}
}

// DocMismatches checks a Markdown flag table against fs: every flag must
// have a row starting "| `--name` |" that names its environment variable
// and shows its default (both in backquotes). It returns one line per
// problem; a test of each binary keeps its docs in step with its flags.
func DocMismatches(doc string, fs *flag.FlagSet, envNames map[string]string) []string {
	var problems []string
	lines := strings.Split(doc, "\n")
	fs.VisitAll(func(f *flag.Flag) {
		var row string
		for _, line := range lines {
			if strings.HasPrefix(line, "| `--"+f.Name+"` |") {
				row = line
			}
		}
		switch e := envNames[f.Name]; {
		case row == "":
			problems = append(problems, fmt.Sprintf("no row for --%s", f.Name))
		case e == "" || !strings.Contains(row, "`"+e+"`"):
			problems = append(problems, fmt.Sprintf("the row for --%s does not name its env variable %q: %s", f.Name, e, row))
		case f.DefValue != "" && !strings.Contains(row, "`"+f.DefValue+"`"):
			problems = append(problems, fmt.Sprintf("the row for --%s does not show its default %q: %s", f.Name, f.DefValue, row))
		}
	})
	return problems
}
