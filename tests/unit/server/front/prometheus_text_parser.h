// Test helper: parses Prometheus text exposition format 0.0.4 back into samples, so tests assert
// on values rather than on string fragments. Strict about what attnd writes: every sample line
// is name{label="value",...} value, label values use the \\ \" \n escapes.
#pragma once

#include <cstdlib>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace attnd::server::front::testing {

struct ParsedSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct ParsedExposition {
  std::vector<ParsedSample> samples;
  std::map<std::string, std::string> types;  // family -> counter|gauge|histogram
  std::map<std::string, std::string> helps;  // family -> unescaped help
  std::vector<std::string> errors;           // lines that did not parse

  // The value of the one sample with this name and exactly these labels.
  std::optional<double> Get(const std::string& name,
                            const std::map<std::string, std::string>& labels = {}) const {
    for (const ParsedSample& s : samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
    return std::nullopt;
  }
  std::vector<ParsedSample> All(const std::string& name) const {
    std::vector<ParsedSample> out;
    for (const ParsedSample& s : samples) {
      if (s.name == name) out.push_back(s);
    }
    return out;
  }
};

inline double ParseSampleValue(const std::string& text, bool* ok) {
  *ok = true;
  if (text == "+Inf") return 1.0 / 0.0;
  if (text == "-Inf") return -1.0 / 0.0;
  if (text == "NaN") return 0.0 / 0.0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  *ok = !text.empty() && end != nullptr && *end == '\0';
  return v;
}

inline ParsedExposition ParseExposition(const std::string& text) {
  ParsedExposition out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    if (line.rfind("# TYPE ", 0) == 0) {
      const std::string rest = line.substr(7);
      const size_t space = rest.find(' ');
      out.types[rest.substr(0, space)] = space == std::string::npos ? "" : rest.substr(space + 1);
      continue;
    }
    if (line.rfind("# HELP ", 0) == 0) {
      const std::string rest = line.substr(7);
      const size_t space = rest.find(' ');
      std::string help;
      const std::string raw = space == std::string::npos ? "" : rest.substr(space + 1);
      for (size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] == '\\' && i + 1 < raw.size()) {
          ++i;
          help += raw[i] == 'n' ? '\n' : raw[i];
        } else {
          help += raw[i];
        }
      }
      out.helps[rest.substr(0, space)] = help;
      continue;
    }
    if (line[0] == '#') continue;

    ParsedSample sample;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') sample.name += line[i++];
    bool good = !sample.name.empty();
    if (good && i < line.size() && line[i] == '{') {
      ++i;
      while (good && i < line.size() && line[i] != '}') {
        std::string key;
        while (i < line.size() && line[i] != '=') key += line[i++];
        if (i + 1 >= line.size() || line[i + 1] != '"') { good = false; break; }
        i += 2;
        std::string value;
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\' && i + 1 < line.size()) {
            const char e = line[i + 1];
            if (e == 'n') value += '\n';
            else if (e == '\\') value += '\\';
            else if (e == '"') value += '"';
            else { good = false; }
            i += 2;
          } else {
            value += line[i++];
          }
        }
        if (i >= line.size()) { good = false; break; }
        ++i;  // closing quote
        sample.labels[key] = value;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size() || line[i] != '}') good = false;
      ++i;
    }
    if (good && (i >= line.size() || line[i] != ' ')) good = false;
    if (good) {
      bool ok = false;
      sample.value = ParseSampleValue(line.substr(i + 1), &ok);
      good = ok;
    }
    if (good) {
      out.samples.push_back(std::move(sample));
    } else {
      out.errors.push_back(line);
    }
  }
  return out;
}

}  // namespace attnd::server::front::testing
