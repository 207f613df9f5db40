// Reads a HAR file (argv[2]) and validates it against the HAR 1.2 schema; prints "valid" or
// the schema errors and exits 1.
const fs = require("fs");
const validate = require("har-validator");
const har = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
validate
  .har(har)
  .then(() => console.log("valid"))
  .catch((e) => {
    console.log(JSON.stringify(e.errors || e.message, null, 2));
    process.exit(1);
  });
